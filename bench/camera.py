"""``make bench-camera``: the camera pipeline end to end against its limit.

One run, the same JPEG frames (synthetic scenes, encoded once) for both:

(a) **limit**: a plain loop that decodes the frames and runs the same detector at the
    same batch size, no Kafka: the most this machine's CPU (or GPU) can detect;
(b) **kestrel**: the project's broker, an inference worker
    (``faust -A faust_app:inference worker``) and a stream worker (tracking), fed by
    ``--cameras`` live cameras at ``--fps`` each: each frame is published with its
    capture time when its turn comes, as a camera would. A consumer of
    ``camera.results`` measures capture -> result latency; frames sent but never
    resulted were dropped (a live camera's oldest frames go when it falls behind).

The offered load should exceed what the machine can detect, so that Kestrel's FPS is
its capacity, not the offer. Prints a table and writes ``bench/results/camera.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime
import orjson
import psutil
from confluent_kafka import Consumer, Producer

from bench.telemetry import REPO, PeakRss, free_port, start_process, stop
from kestrel.broker import BrokerConfig, LocalKafka, fetch_jars
from kestrel.camera.frames import FrameHeaders
from kestrel.camera.registry import register
from kestrel.camera.synthetic import SyntheticScene
from kestrel.producer import KestrelProducer
from kestrel.schemas.camera import CameraConfig
from kestrel.settings import Settings, child_environment, load_settings
from kestrel.topics import CAMERA_FRAMES, CAMERA_RESULTS, ensure_topics
from models import load_detector

RESULTS = REPO / "bench" / "results"


def frames_for(cameras: int, per_camera: int) -> list[list[bytes]]:
    """Each camera's JPEG frames, 10 FPS of scene time, encoded once."""
    out = []
    for camera in range(cameras):
        scene = SyntheticScene(camera)
        out.append(
            [bytes(cv2.imencode(".jpg", scene.render(i / 10)[0])[1]) for i in range(per_camera)]
        )
    return out


def run_limit(
    settings: Settings, jpegs: list[bytes], batch: int, seconds: float
) -> dict[str, float]:
    """Decode + detect in a loop, batch by batch, for at least ``seconds``."""
    detector = load_detector(settings)
    done, started, i = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        chunk = [jpegs[(i + k) % len(jpegs)] for k in range(batch)]
        images = [
            np.asarray(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR), dtype=np.uint8)
            for j in chunk
        ]
        detector.detect(images)
        done += batch
        i += batch
    elapsed = time.perf_counter() - started
    return {
        "fps": done / elapsed,
        "frame_ms": elapsed * 1000 / done,
        "batch": batch,
        "provider": detector.provider,
    }


def feed(
    settings: Settings, frames: list[list[bytes]], fps: float, seconds: float, sent: list[int]
) -> None:
    """Publish each camera's frames at ``fps`` with fresh capture times, for ``seconds``."""
    producer = Producer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "linger.ms": 1,
            "message.max.bytes": 9 << 20,
        }
    )
    topic = CAMERA_FRAMES.name(settings)
    started = time.monotonic()
    tick = 0
    while (now := time.monotonic()) - started < seconds:
        due = started + tick / fps
        if due > now:
            time.sleep(due - now)  # pacing the cameras' frame clock, not waiting for a result
        for camera, jpegs in enumerate(frames):
            camera_id = f"bench-{camera}"
            headers: list[tuple[str, str | bytes | None]] = list(
                FrameHeaders.make(camera_id, time.time_ns(), tick, 640, 480).encode()
            )
            producer.produce(topic, jpegs[tick % len(jpegs)], camera_id.encode(), headers=headers)
            sent[0] += 1
        producer.poll(0)
        tick += 1
    producer.flush(30)


def collect(
    settings: Settings, stop_at: threading.Event, latencies: list[float], seen: set[str]
) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"bench-results-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([CAMERA_RESULTS.name(settings)])
    try:
        while not stop_at.is_set():
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            received = time.time_ns()
            result = orjson.loads(msg.value() or b"")
            capture = result["data"]["metadata"]["capture_ts_ns"]
            latencies.append((received - capture) / 1e6)
            seen.add(result["frame_id"])
    finally:
        consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--fps", type=float, default=15.0, help="per camera")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long the cameras run")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds not measured")
    parser.add_argument("--batch", type=int, default=4, help="the limit's batch size")
    parser.add_argument("--output", type=Path, default=RESULTS / "camera.json")
    args = parser.parse_args()

    defaults = load_settings()
    print(f"encoding {args.cameras} cameras x 50 frames ...", flush=True)
    frames = frames_for(args.cameras, 50)
    limit = run_limit(defaults, [j for cam in frames for j in cam], args.batch, 15.0)
    print(
        f"  limit: {limit['fps']:.1f} FPS, {limit['frame_ms']:.1f} ms a frame (batch {args.batch})",
        flush=True,
    )

    workdir = Path(tempfile.mkdtemp(prefix="kestrel-bench-camera-"))
    cfg = BrokerConfig(
        defaults.kafka_version,
        free_port(),
        free_port(),
        workdir / "kafka",
        defaults.cache_dir,
        1024,
    )
    fetch_jars(cfg.cache_dir, cfg.version)
    broker = LocalKafka(cfg)
    broker.start()
    procs = []
    try:
        settings = load_settings(
            broker_url=f"kafka://{cfg.bootstrap_servers}",
            namespace=f"benchcam{uuid.uuid4().hex[:6]}",
            data_dir=workdir,
            max_batch=args.batch,
        )
        ensure_topics(settings)
        producer = KestrelProducer(settings)
        for camera in range(args.cameras):
            register(
                producer,
                settings,
                CameraConfig(
                    camera_id=f"bench-{camera}", source=f"synthetic:{camera}", fps=args.fps
                ),
            )
        producer.flush()
        env = child_environment(settings, PYTHONUNBUFFERED="1")
        inference = start_process(
            [sys.executable, "-m", "faust", "-A", "faust_app:inference", "worker", "-l", "info"],
            env,
            workdir / "inference.log",
        )
        stream = start_process(
            [sys.executable, "-m", "faust", "-A", "faust_app", "worker", "-l", "info"],
            env,
            workdir / "stream.log",
        )
        procs = [inference, stream]
        for proc, log in ((inference, "inference.log"), (stream, "stream.log")):
            deadline = time.monotonic() + 120
            while "[^Worker]: Ready" not in (workdir / log).read_text(errors="replace"):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{log} not ready:\n" + (workdir / log).read_text()[-3000:])
                time.sleep(0.2)  # polling the worker's log for its ready line
        rss = PeakRss(inference.pid)
        stop_at, sent = threading.Event(), [0]
        latencies: list[float] = []
        seen: set[str] = set()
        reader = threading.Thread(
            target=collect, args=(settings, stop_at, latencies, seen), daemon=True
        )
        reader.start()
        feeder = threading.Thread(
            target=feed, args=(settings, frames, args.fps, args.seconds, sent)
        )
        cpu_start = psutil.cpu_times()
        feeder.start()
        time.sleep(args.warmup)  # the measured span starts after the warm-up
        measured_from, results_at_start, sent_at_start = time.monotonic(), len(latencies), sent[0]
        feeder.join()
        measured = time.monotonic() - measured_from
        results_in_span = len(latencies) - results_at_start
        sent_in_span = sent[0] - sent_at_start
        time.sleep(3)  # let the last frames drain before counting what was dropped
        stop_at.set()
        reader.join(10)
        peak_rss = rss.stop()
        cpu_end = psutil.cpu_times()
    finally:
        for proc in procs:
            stop(proc)
        broker.stop()

    span = np.array(latencies[results_at_start : results_at_start + results_in_span])
    p50, p95, p99 = (float(np.percentile(span, q)) for q in (50, 95, 99))
    kestrel_fps = results_in_span / measured
    dropped = sent[0] - len(seen)
    busy = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
    out: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": psutil.cpu_count(),
            "onnxruntime": onnxruntime.__version__,
            "provider": limit["provider"],
        },
        "cameras": args.cameras,
        "offered_fps": args.cameras * args.fps,
        "limit_fps": limit["fps"],
        "limit_frame_ms": limit["frame_ms"],
        "limit_batch": args.batch,
        "kestrel_fps": kestrel_fps,
        "kestrel_vs_limit": kestrel_fps / limit["fps"],
        "latency_ms_p50": p50,
        "latency_ms_p95": p95,
        "latency_ms_p99": p99,
        "frames_sent": sent[0],
        "frames_resulted": len(seen),
        "dropped_frames": dropped,
        "sent_in_span": sent_in_span,
        "peak_rss_mb": peak_rss,
        "host_cpu_busy_s": busy,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print()
    print(f"{'':36}{'FPS':>10}{'ms/frame':>10}")
    print(f"{'limit: decode + detect, no Kafka':36}{limit['fps']:>10.1f}{limit['frame_ms']:>10.1f}")
    print(f"{'kestrel end to end':36}{kestrel_fps:>10.1f}{'':>10}")
    print(
        f"\noffered {args.cameras} cameras x {args.fps:g} FPS = {args.cameras * args.fps:g} FPS; "
        f"kestrel = {kestrel_fps / limit['fps']:.0%} of the limit"
    )
    print(f"capture -> result latency: p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms")
    print(
        f"frames sent {sent[0]}, resulted {len(seen)}, dropped {dropped}; "
        f"inference worker peak RSS {peak_rss:.0f} MB"
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
