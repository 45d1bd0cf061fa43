"""``make bench-camera``: the camera pipeline end to end against its limit.

One run, the same JPEG frames (synthetic scenes, encoded once) for both:

(a) **limit**: a plain loop that decodes the frames and runs the same detector at the
    same batch size, no Kafka: the most this machine's CPU (or GPU) can detect;
(b) **kestrel**: the project's broker, an inference worker
    (``faust -A faust_app:inference worker``) and a stream worker (tracking), fed by
    live cameras (out of phase with each other, as real ones are): each frame is
    published with its capture time when its turn comes. A consumer of
    ``camera.results`` measures capture -> result latency; frames sent but never
    resulted were dropped (a live camera's oldest frames go when it falls behind).
    Two phases: **capacity**, ``--cameras`` at ``--fps`` each, more than the machine
    detects, so the FPS is the pipeline's capacity; and **latency**, ``--latency-fps``
    in all from ``--latency-cameras``, a load it keeps up with, so the latency is the
    pipeline's and not a queue's.

Prints a table (with each phase's median stage times, from the results' own
metadata) and writes ``bench/results/camera.json``.
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

from bench import threads
from bench.telemetry import REPO, PeakRss, broker_settings, start_broker, start_process, stop
from kestrel.camera.frames import FrameHeaders
from kestrel.camera.registry import register
from kestrel.camera.synthetic import SyntheticScene
from kestrel.producer import KestrelProducer
from kestrel.schemas.camera import CameraConfig
from kestrel.settings import Settings, child_environment, load_settings
from kestrel.topics import CAMERA_FRAMES, CAMERA_RESULTS
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
    settings: Settings, jpegs: list[bytes], batch: int, seconds: float, spin: bool
) -> dict[str, float]:
    """Decode + detect in a loop, batch by batch, for at least ``seconds``."""
    detector = load_detector(settings, spin=spin)
    done, started, i = 0, time.perf_counter(), 0
    cpu_started = time.process_time()  # all threads: onnxruntime's included
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
        "cpu_ms_per_frame": (time.process_time() - cpu_started) * 1000 / done,
        "batch": batch,
        "provider": detector.provider,
    }


def feed(
    settings: Settings,
    frames: list[list[bytes]],
    fps: float,
    seconds: float,
    sent: list[int],
    stop_at: threading.Event | None = None,
) -> None:
    """Publish each camera's frames at ``fps`` with fresh capture times, for ``seconds``
    (or until ``stop_at`` is set).

    Cameras are not in phase (real ones never are): camera k of n captures at
    (tick + k / n) / fps.
    """
    producer = Producer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "linger.ms": 1,
            "message.max.bytes": 9 << 20,
        }
    )
    topic = CAMERA_FRAMES.name(settings)
    started = time.monotonic()
    slot, cameras = 0, len(frames)
    while (now := time.monotonic()) - started < seconds:
        if stop_at is not None and stop_at.is_set():
            break
        due = started + slot / (fps * cameras)
        if due > now:
            time.sleep(due - now)  # pacing the cameras' frame clock, not waiting for a result
        camera, tick = slot % cameras, slot // cameras
        camera_id = f"bench-{camera}"
        headers: list[tuple[str, str | bytes | None]] = list(
            FrameHeaders.make(camera_id, time.time_ns(), tick, 640, 480).encode()
        )
        jpegs = frames[camera]
        producer.produce(topic, jpegs[tick % len(jpegs)], camera_id.encode(), headers=headers)
        sent[0] += 1
        producer.poll(0)
        slot += 1
    producer.flush(30)


# (capture ns, capture -> receipt ms, frame id, the result's own stage times)
Seen = list[tuple[int, float, str, dict[str, float]]]


def collect(settings: Settings, stop_at: threading.Event, seen: Seen) -> None:
    """Results as a downstream consumer sees them: committed ones, receipt time noted.

    A ``frame_dropped`` record is a frame the pipeline dropped (its camera was behind):
    it counts as dropped, not as a result.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"bench-results-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
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
            if result.get("kind") != "camera_result":
                continue
            capture = result["data"]["metadata"]["capture_ts_ns"]
            stages = result["data"]["metadata"]["stages_ms"]
            seen.append((capture, (received - capture) / 1e6, result["frame_id"], stages))
    finally:
        consumer.close()


def phase(
    settings: Settings,
    frames: list[list[bytes]],
    fps: float,
    seconds: float,
    warmup: float,
    seen: Seen,
    accounts: dict[str, psutil.Process] | None = None,
) -> dict[str, Any]:
    """Feed ``frames`` live at ``fps`` per camera; figures of the span after ``warmup``.

    CPU is each process's (and each of its thread groups') over the same span, per
    frame captured in the span and resulted: the warm-up's start-up costs (a fresh
    JVM compiling Kafka's hot paths, say) fall outside it, as in a long-running
    deployment.
    """
    sent = [0]
    started_ns = time.time_ns()
    feeder = threading.Thread(target=feed, args=(settings, frames, fps, seconds, sent))
    feeder.start()
    time.sleep(warmup)  # the measured span starts after the warm-up
    accounts = accounts or {}
    cpu_before = {name: _cpu_s(p) for name, p in accounts.items()}
    threads_before = {name: threads.snapshot(p.pid) for name, p in accounts.items()}
    span_start_ns = time.time_ns()
    feeder.join()
    span_end_ns = time.time_ns()
    cpu_spent = {name: _cpu_s(p) - cpu_before[name] for name, p in accounts.items()}
    thread_spent = {
        name: threads.by_group(threads_before[name], threads.snapshot(p.pid))
        for name, p in accounts.items()
    }
    # Frames still queued come out (or stay dropped): wait until results stop coming.
    count, quiet_since, give_up = len(seen), time.monotonic(), time.monotonic() + 15
    while time.monotonic() - quiet_since < 1.5 and time.monotonic() < give_up:
        time.sleep(0.1)  # polling the reader's list for a quiet spell
        if len(seen) != count:
            count, quiet_since = len(seen), time.monotonic()
    this_phase = [s for s in seen if s[0] >= started_ns]
    in_span = [s for s in this_phase if span_start_ns <= s[0] < span_end_ns]
    latencies = np.array([s[1] for s in in_span]) if in_span else np.array([np.nan])
    p50, p95, p99 = (float(np.percentile(latencies, q)) for q in (50, 95, 99))
    stage_names = in_span[0][3] if in_span else {}
    stages = {name: float(np.median([s[3][name] for s in in_span])) for name in stage_names}
    per_frame = 1000 / max(len(in_span), 1)
    return {
        "offered_fps": fps * len(frames),
        "cameras": len(frames),
        "results_per_s": len(in_span) / ((span_end_ns - span_start_ns) / 1e9),
        "latency_ms_p50": p50,
        "latency_ms_p95": p95,
        "latency_ms_p99": p99,
        "frames_sent": sent[0],
        "frames_resulted": len({s[2] for s in this_phase}),
        "dropped_frames": sent[0] - len({s[2] for s in this_phase}),
        "stage_ms_p50": stages,  # where a frame's time goes, from each result's metadata
        "cpu_ms_per_frame": {name: spent * per_frame for name, spent in cpu_spent.items()},
        # Each process's thread groups that took at least 2 % of its CPU, ms a frame.
        "thread_cpu_ms_per_frame": {
            name: {
                group: spent * per_frame
                for group, spent in groups.items()
                if spent >= 0.02 * max(cpu_spent[name], 1e-9)
            }
            for name, groups in thread_spent.items()
        },
    }


JIT = "CN CompilerThre"  # HotSpot's C1 and C2 compiler threads, as /proc names them


def warm_broker(
    settings: Settings, frames: list[list[bytes]], fps: float, broker: psutil.Process, most_s: float
) -> dict[str, float]:
    """Run the capacity load, unmeasured, until the broker's JVM stops compiling.

    A fresh JVM spends minutes compiling Kafka's hot paths (in the first runs of this
    benchmark, 5-10 ms of broker CPU a frame went to its compiler threads): a cost a
    broker pays once, not per frame. The load runs until the compiler threads take
    under 2 % of a core over 5 s, or for ``most_s``.
    """
    sent, stop_at = [0], threading.Event()
    feeder = threading.Thread(target=feed, args=(settings, frames, fps, most_s, sent, stop_at))
    started = time.monotonic()
    feeder.start()
    last = threads.snapshot(broker.pid)
    compiling = float("nan")
    while feeder.is_alive():
        feeder.join(5.0)  # one 5 s interval of the compiler's CPU
        now = threads.snapshot(broker.pid)
        compiling = threads.by_group(last, now).get(JIT, 0.0) / 5.0
        last = now
        if compiling < 0.02:
            break
    stop_at.set()
    feeder.join()
    return {"seconds": time.monotonic() - started, "jit_cores_at_end": compiling}


def _cpu_s(process: psutil.Process) -> float:
    """A process's CPU seconds, user + system, its threads and waited-for children."""
    times = process.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


def overhead(limit_cpu_ms: float, per_process: dict[str, float]) -> dict[str, float]:
    """The pipeline's own CPU a frame: everything but the limit's decode and detect.

    ``per_process`` is CPU ms a resulted frame of each process of the run (the
    inference worker's includes its decode and detect); the share is against the
    limit loop's CPU a frame for the same decode and detect at the same batch size.
    """
    total = sum(per_process.values())
    own = total - limit_cpu_ms
    return {
        "total_cpu_ms_per_frame": total,
        "pipeline_cpu_ms_per_frame": own,
        "pipeline_share_of_detector": own / limit_cpu_ms,
    }


LATENCY_SHARE = 0.7  # of the measured capacity, the most the latency phase offers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--fps", type=float, default=15.0, help="per camera")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long the cameras run")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds not measured")
    parser.add_argument("--batch", type=int, default=4, help="the limit's batch size")
    parser.add_argument(
        "--latency-fps",
        type=float,
        default=30.0,
        help="total FPS of the latency phase, at most LATENCY_SHARE of the capacity measured "
        "(a load the machine keeps up with, whatever its speed that day)",
    )
    parser.add_argument("--latency-cameras", type=int, default=3)
    parser.add_argument(
        "--broker-warmup-s",
        type=float,
        default=240.0,
        help="the most the capacity load runs, unmeasured, while the broker's JVM compiles",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "camera.json")
    args = parser.parse_args()

    defaults = load_settings()
    print(f"encoding {args.cameras} cameras x 50 frames ...", flush=True)
    frames = frames_for(args.cameras, 50)
    jpegs = [j for cam in frames for j in cam]
    # Back to back, ONNX Runtime's spinning threads are a little faster and cost more
    # CPU a frame: the limit is the faster loop's FPS and the cheaper loop's CPU.
    limits = [run_limit(defaults, jpegs, args.batch, 15.0, spin) for spin in (True, False)]
    limit = dict(max(limits, key=lambda run: run["fps"]))
    limit["cpu_ms_per_frame"] = min(run["cpu_ms_per_frame"] for run in limits)
    limit["spin_fps"], limit["no_spin_fps"] = limits[0]["fps"], limits[1]["fps"]
    print(
        f"  limit: {limit['fps']:.1f} FPS, {limit['frame_ms']:.1f} ms a frame (batch {args.batch})",
        flush=True,
    )

    workdir = Path(tempfile.mkdtemp(prefix="kestrel-bench-camera-"))
    broker = start_broker(workdir, defaults)
    procs = []
    try:
        settings = broker_settings(broker, workdir, "benchcam", max_batch=args.batch)
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
        stop_at = threading.Event()
        seen: Seen = []
        reader = threading.Thread(target=collect, args=(settings, stop_at, seen), daemon=True)
        reader.start()
        cpu_start = psutil.cpu_times()
        assert broker.proc is not None
        accounts = {
            "inference worker": psutil.Process(inference.pid),
            "stream worker": psutil.Process(stream.pid),
            "broker": psutil.Process(broker.proc.pid),
            "cameras + result reader (this process)": psutil.Process(),
        }
        warm = (
            warm_broker(settings, frames, args.fps, accounts["broker"], args.broker_warmup_s)
            if args.broker_warmup_s > 0
            else {"seconds": 0.0, "jit_cores_at_end": float("nan")}
        )
        print(
            f"  broker warmed for {warm['seconds']:.0f} s "
            f"(its JIT compiler at the end: {warm['jit_cores_at_end']:.1%} of a core)",
            flush=True,
        )
        # Phase 1, capacity: more frames than the machine detects.
        capacity = phase(settings, frames, args.fps, args.seconds, args.warmup, seen, accounts)
        # Phase 2, latency: a load the machine keeps up with (on a slow day 30 FPS is
        # more than it detects, and the phase would measure a queue, not a latency).
        latency_fps = min(args.latency_fps, LATENCY_SHARE * capacity["results_per_s"])
        per_camera = latency_fps / args.latency_cameras
        # The same accounting where nothing is dropped: a frame's cost when it is not
        # also paying for frames that are sent, stored and read, then dropped.
        latency = phase(
            settings,
            frames[: args.latency_cameras],
            per_camera,
            args.seconds,
            args.warmup,
            seen,
            accounts,
        )
        stop_at.set()
        reader.join(10)
        peak_rss = rss.stop()
        cpu_end = psutil.cpu_times()
    finally:
        for proc in procs:
            stop(proc)
        broker.stop()

    kestrel_fps = capacity["results_per_s"]
    busy = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
    out: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": psutil.cpu_count(),
            "onnxruntime": onnxruntime.__version__,
            "provider": limit["provider"],
        },
        "result_commit_ms": settings.result_commit_ms,
        "broker_warmup": warm,
        "limit_fps": limit["fps"],
        "limit_fps_spinning": limit["spin_fps"],  # ONNX Runtime's threads spin between runs
        "limit_fps_not_spinning": limit["no_spin_fps"],  # as the inference worker runs it
        "limit_frame_ms": limit["frame_ms"],
        "limit_batch": args.batch,
        "kestrel_fps": kestrel_fps,
        "kestrel_vs_limit": kestrel_fps / limit["fps"],
        # Latency at a load within capacity (phase 2); the overloaded phase's below.
        "latency_ms_p50": latency["latency_ms_p50"],
        "latency_ms_p95": latency["latency_ms_p95"],
        "latency_ms_p99": latency["latency_ms_p99"],
        "dropped_frames": capacity["dropped_frames"] + latency["dropped_frames"],
        "peak_rss_mb": peak_rss,
        "host_cpu_busy_s": busy,
        "limit_cpu_ms_per_frame": limit["cpu_ms_per_frame"],
        **overhead(limit["cpu_ms_per_frame"], capacity["cpu_ms_per_frame"]),
        # What the CPU allows: the machine's cores over the CPU a resulted frame took.
        "cpu_bound_fps": (psutil.cpu_count() or 1)
        * 1000
        / sum(capacity["cpu_ms_per_frame"].values()),
        "latency_phase_overhead": overhead(limit["cpu_ms_per_frame"], latency["cpu_ms_per_frame"]),
        "capacity_phase": capacity,
        "latency_phase": latency,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print()
    print(f"{'':44}{'FPS':>8}{'p50 ms':>8}{'p99 ms':>8}{'dropped':>9}")
    print(f"{'limit: decode + detect, no Kafka':44}{limit['fps']:>8.1f}{limit['frame_ms']:>8.1f}")
    for name, run in (("kestrel, capacity", capacity), ("kestrel, latency", latency)):
        label = f"{name} ({run['cameras']:.0f} cams, {run['offered_fps']:.3g} FPS offered)"
        print(
            f"{label:44}{run['results_per_s']:>8.1f}{run['latency_ms_p50']:>8.0f}"
            f"{run['latency_ms_p99']:>8.0f}{run['dropped_frames']:>9.0f}"
        )
    print(
        f"\nkestrel = {kestrel_fps / limit['fps']:.0%} of the limit's FPS; latency p50 "
        f"{latency['latency_ms_p50']:.0f} ms (target <= {limit['frame_ms'] + 30:.0f}); "
        f"inference worker peak RSS {peak_rss:.0f} MB"
    )
    for name, run in (("capacity", capacity), ("latency", latency)):
        parts = ", ".join(f"{k} {v:.1f}" for k, v in run["stage_ms_p50"].items())
        print(f"median stage times, {name} phase (ms): {parts}")
    print("\nCPU ms a resulted frame (the limit loop's in the same run):")
    print(f"  {'':42}{'capacity':>9}{'latency':>9}")
    print(f"  {'limit: decode + detect':42}{out['limit_cpu_ms_per_frame']:>9.1f}")
    for name, value in capacity["cpu_ms_per_frame"].items():
        print(f"  {name:42}{value:>9.1f}{latency['cpu_ms_per_frame'][name]:>9.1f}")
    print(
        f"  capacity as the CPU bounds it: {psutil.cpu_count()} cores / "
        f"{out['total_cpu_ms_per_frame']:.1f} ms a frame = {out['cpu_bound_fps']:.1f} FPS "
        f"(measured {kestrel_fps:.1f})"
    )
    low = out["latency_phase_overhead"]
    print(
        f"  pipeline's own (all of the above but the limit's): capacity "
        f"{out['pipeline_cpu_ms_per_frame']:.1f} ms = {out['pipeline_share_of_detector']:.0%}, "
        f"latency {low['pipeline_cpu_ms_per_frame']:.1f} ms = "
        f"{low['pipeline_share_of_detector']:.0%} of the detector's cost (target <= 25 %)"
    )
    print("\nwhere each process's CPU goes, ms a resulted frame by thread (capacity / latency):")
    for name in capacity["thread_cpu_ms_per_frame"]:
        groups = [
            capacity["thread_cpu_ms_per_frame"][name],
            latency["thread_cpu_ms_per_frame"][name],
        ]
        top = sorted(set(groups[0]) | set(groups[1]), key=lambda g: -groups[0].get(g, 0.0))[:5]
        parts = ", ".join(
            f"{g} {groups[0].get(g, 0.0):.1f} / {groups[1].get(g, 0.0):.1f}" for g in top
        )
        print(f"  {name}: {parts}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
