"""``make bench-web``: the dashboard server fanning out to 100 WebSocket clients.

One run, against the project's broker and the real server (``python -m web``, the
demo's ``kestrel-web``, in its own process):

* a producer plays a 60 Hz model collector (one ``metrics.model`` message per sample,
  source ``model:bench``) and the tracking stage of one camera (a ``camera.results``
  message per frame, ``--camera-fps``), each stamped with the time it was produced;
* ``bench.web_clients``, in a process of its own, subscribes clients to
  ``metrics:model:bench`` and ``camera:bench-0`` and measures three phases:
  **one** client alone (the floor: Kafka -> server -> one socket), **all**
  ``--clients``, and all of them **with a slow client** (4 KB receive buffer, one
  message read a second) connected too; the last two take turns, ``--rounds``
  times, so that the machine's drift falls on both alike;
* the server's and the clients' CPU and resident memory are sampled throughout.

Latency is the producer's timestamp to the client's receipt (one clock: one machine).
The stream worker is not running: the page's latest values come from the collector
topics directly (as here), only its window aggregates go through the worker.

Prints a table and writes ``bench/results/web.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil
from confluent_kafka import Producer

from bench.telemetry import REPO, broker_settings, free_port, start_broker, start_process, stop
from bench.workload import FIELDS
from kestrel.collectors.publisher import batch_envelope
from kestrel.schemas.camera import (
    AggSummary,
    CameraResult,
    Detection,
    ModelResult,
    PostProcessingResult,
    ResultData,
    ResultMetadata,
    TrackedObject,
)
from kestrel.settings import Settings, child_environment, load_settings
from kestrel.topics import CAMERA_RESULTS, METRICS_MODEL

RESULTS = REPO / "bench" / "results"
SOURCE = "model:bench"
CAMERA = "bench-0"
CHANNELS = [f"metrics:{SOURCE}", f"camera:{CAMERA}"]
PHASES = {
    "one": "1 client",
    "all": "{n} clients",
    "all_with_slow": "{n} clients + slow one",
    "all_with_hostile": "{n} clients + hostile",
}


def camera_result(people: int = 4) -> dict[str, Any]:
    """A result as the tracking stage writes it, with ``people`` tracked (a template)."""
    boxes = [[100.0 + 120 * i, 200.0, 180.0 + 120 * i, 420.0] for i in range(people)]
    result = CameraResult(
        camera_id=CAMERA,
        message_key=CAMERA,
        frame_id="",
        input_stream="camera.frames",
        data=ResultData(
            post_processing_result=PostProcessingResult(
                agg_summary=AggSummary(
                    counts={"person": people}, zones={}, line_crossings={}, active_tracks=people
                ),
                tracked_objects=[
                    TrackedObject(
                        track_id=i + 1,
                        label="person",
                        score=0.9,
                        box=box,
                        velocity=[1.5, 0.0],
                        age=30,
                        zones=[],
                    )
                    for i, box in enumerate(boxes)
                ],
            ),
            model_result=ModelResult(
                model="ssdlite_person",
                provider="CPUExecutionProvider",
                batch_size=1,
                detections=[Detection(label="person", score=0.9, box=box) for box in boxes],
            ),
            metadata=ResultMetadata(
                capture_ts_ns=0,
                seq=0,
                width=640,
                height=480,
                stages_ms={"inference": 8.0, "tracking": 0.5},
            ),
            processing_time=0.03,
            stream_key=CAMERA,
        ),
    )
    return result.model_dump(by_alias=True)


class LoadProducer:
    """The 60 Hz collector and the camera's results, paced in real time, until stopped."""

    def __init__(self, settings: Settings, hz: float, camera_fps: float) -> None:
        self.producer = Producer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "linger.ms": 0,
                "log.connection.close": False,  # the broker stops before this producer
            }
        )
        self.metrics_topic = METRICS_MODEL.name(settings)
        self.results_topic = CAMERA_RESULTS.name(settings)
        self.hz = hz
        self.camera_every = max(1, round(hz / camera_fps))
        self.sent: list[tuple[float, int]] = []  # (time, 0 metrics / 1 camera)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        template = camera_result()
        rng = np.random.default_rng(7)
        next_at = time.monotonic()
        for tick in itertools.count():
            if self._stop.is_set():
                break
            now_ns = time.time_ns()
            values = rng.random(len(FIELDS)) * 100
            data = {name: float(v) for name, v in zip(FIELDS, values, strict=True)}
            value = batch_envelope(SOURCE, [(now_ns // 1_000_000, data)])
            self.producer.produce(self.metrics_topic, value, SOURCE.encode())
            self.sent.append((now_ns / 1e9, 0))
            if tick % self.camera_every == 0:
                template["frame_id"] = f"{CAMERA}-{tick}"
                template["data"]["metadata"]["seq"] = tick
                template["data"]["metadata"]["capture_ts_ns"] = time.time_ns()
                self.producer.produce(self.results_topic, orjson.dumps(template), CAMERA.encode())
                self.sent.append((time.time(), 1))
            self.producer.poll(0)
            next_at += 1 / self.hz
            time.sleep(max(0.0, next_at - time.monotonic()))  # pacing a load generator

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.producer.flush(10)


class Sampler:
    """CPU time and RSS of some processes, and the server's WebSocket status, twice a second."""

    def __init__(self, pids: dict[str, int], status_url: str, every_s: float = 0.5) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.status_url = status_url
        self.every_s = every_s
        # name -> [(time, cpu seconds, rss MB)]
        self.samples: dict[str, list[tuple[float, float, float]]] = {n: [] for n in pids}
        self.status: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.wait(self.every_s):
                for name, process in self.processes.items():
                    try:
                        cpu, rss = process.cpu_times(), process.memory_info().rss / 2**20
                    except psutil.NoSuchProcess:
                        continue
                    self.samples[name].append((time.time(), cpu.user + cpu.system, rss))
                self.status.append((time.time(), http.get(self.status_url).json()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def during(self, name: str, windows: list[tuple[float, float]]) -> dict[str, float]:
        """CPU (% of one core) and peak RSS of process ``name`` over ``windows``."""
        samples = self.samples[name]
        times = np.array([s[0] for s in samples])
        cpu = np.array([s[1] for s in samples])
        used = sum(np.interp(b, times, cpu) - np.interp(a, times, cpu) for a, b in windows)
        inside = [s[2] for s in samples if any(a <= s[0] <= b for a, b in windows)]
        return {
            "cpu_percent": float(100 * used / sum(end - start for start, end in windows)),
            "rss_mb_peak": max(inside),
        }

    def status_at(self, end: float) -> dict[str, Any]:
        """The server's WebSocket status last sampled before ``end``."""
        return [s for t, s in self.status if t <= end][-1]


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2) as http:
        while True:
            try:
                if http.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the web server did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.2)  # polling the server's readiness endpoint


def phase_stats(
    clients: dict[str, Any], n: int, windows: list[tuple[float, float]], channels: list[str]
) -> dict[str, Any]:
    """Rates and latencies of subscribers ``0..n-1`` over a phase's ``windows``."""
    seconds = sum(end - start for start, end in windows)
    rates: dict[str, list[float]] = {c: [] for c in channels}
    latencies: dict[str, list[np.ndarray]] = {c: [] for c in channels}
    for i in range(n):
        received = clients[f"received_{i}"]
        inside = np.zeros(received.shape, dtype=bool)
        for start, end in windows:
            inside |= (received >= start) & (received <= end)
        for c, channel in enumerate(channels):
            mine = inside & (clients[f"channel_{i}"] == c)
            rates[channel].append(int(mine.sum()) / seconds)
            latencies[channel].append(clients[f"latency_{i}"][mine])
    pooled = np.concatenate([x for per in latencies.values() for x in per])
    per_channel = {}
    for channel in channels:
        lat = np.concatenate(latencies[channel])
        per_channel[channel] = {
            "rate_hz_min": min(rates[channel]),
            "rate_hz_median": float(np.median(rates[channel])),
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "updates": int(lat.size),
        }
    return {
        "clients": n,
        "seconds": seconds,
        "latency_ms_p50": float(np.percentile(pooled, 50)),
        "latency_ms_p99": float(np.percentile(pooled, 99)),
        "latency_ms_max": float(pooled.max()),
        "channels": per_channel,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--hz", type=float, default=60.0, help="the metrics source's rate")
    parser.add_argument("--camera-fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured span")
    parser.add_argument("--warmup", type=float, default=3.0, help="before each span")
    parser.add_argument("--rounds", type=int, default=8, help="of without / with the slow one")
    parser.add_argument(
        "--hostile",
        type=int,
        default=80,
        help="stalled clients in each round's hostile phase, beside a subscribe flood, "
        "bad frames and a reconnect storm (bench/web_hostile.py); 0: no hostile phase",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "web.json")
    args = parser.parse_args()

    defaults = load_settings()
    workdir = Path(tempfile.mkdtemp(prefix="kestrel-bench-web-"))
    broker = start_broker(workdir, defaults)
    port = free_port()
    settings = broker_settings(broker, workdir, "benchweb", web_port=port)
    env = child_environment(settings, PYTHONUNBUFFERED="1")
    server = start_process([sys.executable, "-m", "web"], env, workdir / "web.log")
    load = LoadProducer(settings, args.hz, args.camera_fps)
    out = workdir / "clients.npz"
    try:
        wait_healthy(port, server, workdir / "web.log", 60)
        load.start()
        print(
            f"server on :{port}; producing {args.hz:g} Hz metrics + {args.camera_fps:g} FPS "
            f"camera results; {args.clients} clients; {args.rounds} rounds of "
            f"{args.seconds:g} s without and with a slow client",
            flush=True,
        )
        clients_proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.web_clients", str(port), str(out)),
                *("--clients", str(args.clients), "--channels", ",".join(CHANNELS)),
                *("--seconds", str(args.seconds), "--warmup", str(args.warmup)),
                *("--rounds", str(args.rounds), "--hostile", str(args.hostile)),
            ],
            cwd=REPO,
        )
        status_url = f"http://127.0.0.1:{port}/api/v1/status/websocket"
        sampler = Sampler({"server": server.pid, "clients": clients_proc.pid}, status_url)
        phases = 2 + (args.hostile > 0)
        budget = (phases * args.rounds + 1) * (args.seconds + args.warmup) + 120
        if clients_proc.wait(budget) != 0:
            raise RuntimeError(f"the clients failed (exit {clients_proc.returncode})")
        sampler.stop()
    finally:
        load.stop()
        stop(server)
        broker.stop()

    result = summarise(dict(np.load(out)), args, sampler, load)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result, args.clients)
    print(f"wrote {args.output}")
    return 0


def summarise(
    clients: dict[str, Any], args: argparse.Namespace, sampler: Sampler, load: LoadProducer
) -> dict[str, Any]:
    windows: dict[str, list[tuple[float, float]]] = {}
    for name, (start, end) in zip(
        clients["phase_names"].tolist(), clients["phase_bounds"].tolist(), strict=True
    ):
        windows.setdefault(name, []).append((start, end))
    phases: dict[str, Any] = {}
    for name, spans in windows.items():
        stats = phase_stats(clients, 1 if name == "one" else args.clients, spans, CHANNELS)
        stats.update(sampler.during("server", spans))
        stats["clients_process_cpu_percent"] = sampler.during("clients", spans)["cpu_percent"]
        sent = sum(1 for t, kind in load.sent if kind == 0 and any(a <= t <= b for a, b in spans))
        stats["metrics_offered_hz"] = sent / stats["seconds"]
        n = 1 if name == "one" else args.clients
        stats["latency_ms_p99_per_round"] = [
            phase_stats(clients, n, [span], CHANNELS)["latency_ms_p99"] for span in spans
        ]
        phases[name] = stats
    slow_reports = orjson.loads(clients["slow"].item())
    for report, (start, end) in zip(slow_reports, windows["all_with_slow"], strict=True):
        report["rate_hz"] = report["received"] / (end - start)
        report["server_view"] = sampler.status_at(end)
    base, with_slow = phases["all"], phases["all_with_slow"]
    hostile: dict[str, Any] = {}
    if "all_with_hostile" in phases:
        under = phases["all_with_hostile"]
        metrics = CHANNELS[0]
        hostile = {
            "latency_ms_p50_with_hostile": under["latency_ms_p50"],
            "latency_ms_p99_with_hostile": under["latency_ms_p99"],
            "hostile_p50_change": under["latency_ms_p50"] / base["latency_ms_p50"] - 1,
            "hostile_p99_change": under["latency_ms_p99"] / base["latency_ms_p99"] - 1,
            "hostile_rate_change": under["channels"][metrics]["rate_hz_median"]
            / base["channels"][metrics]["rate_hz_median"]
            - 1,
            "hostile": orjson.loads(clients["hostile"].item()),
            "hostile_process_cpu_percent": float(
                np.mean([r["cpu_percent"] for r in orjson.loads(clients["hostile"].item())])
            ),
        }
    return {
        "machine": {"platform": platform.platform(), "cpus": psutil.cpu_count()},
        "clients": args.clients,
        "metrics_hz": args.hz,
        "camera_fps": args.camera_fps,
        "rounds": args.rounds,
        "rate_hz_min": base["channels"][CHANNELS[0]]["rate_hz_min"],
        "latency_ms_p50": base["latency_ms_p50"],
        "latency_ms_p99": base["latency_ms_p99"],
        "latency_ms_p99_with_slow_client": with_slow["latency_ms_p99"],
        "slow_client_p99_change": with_slow["latency_ms_p99"] / base["latency_ms_p99"] - 1,
        "server_rss_mb": max(p["rss_mb_peak"] for p in phases.values()),
        "server_cpu_percent": base["cpu_percent"],
        "phases": phases,
        "slow_client": slow_reports,
        **hostile,
    }


def print_table(result: dict[str, Any], n: int) -> None:
    metrics, camera = CHANNELS
    print()
    head = f"{'phase':24}{'metrics Hz':>12}{'camera Hz':>10}{'p50 ms':>8}{'p99 ms':>8}"
    print(head + f"{'max ms':>8}{'server CPU':>11}{'RSS MB':>8}{'clients CPU':>12}")
    print(f"{'':24}{'min / med':>12}{'min':>10}")
    for name, phase in result["phases"].items():
        m, c = phase["channels"][metrics], phase["channels"][camera]
        print(
            f"{PHASES[name].format(n=n):24}"
            f"{m['rate_hz_min']:>6.1f} /{m['rate_hz_median']:>5.1f}{c['rate_hz_min']:>10.1f}"
            f"{phase['latency_ms_p50']:>8.1f}{phase['latency_ms_p99']:>8.1f}"
            f"{phase['latency_ms_max']:>8.1f}{phase['cpu_percent']:>10.0f}%"
            f"{phase['rss_mb_peak']:>8.0f}{phase['clients_process_cpu_percent']:>11.0f}%"
        )
    offered = result["phases"]["all"]["metrics_offered_hz"]
    p99, change = result["latency_ms_p99"], result["slow_client_p99_change"]
    print(
        f"\nmetrics offered at {offered:.1f} Hz. Target p99 <= 50 ms for {n} clients: "
        f"{p99:.1f} ms ({'met' if p99 <= 50 else 'not met'}). The slow client moved the "
        f"others' p99 by {change:+.1%} (target: at most 10 % slower: "
        f"{'met' if change <= 0.10 else 'not met'})."
    )
    rounds = {
        name: ", ".join(f"{v:.0f}" for v in result["phases"][name]["latency_ms_p99_per_round"])
        for name in ("all", "all_with_slow")
    }
    print(
        f"p99 of each round (ms), the noise to read that against: without the slow client "
        f"{rounds['all']}; with it {rounds['all_with_slow']}"
    )
    if "hostile" in result:
        rounds_h = ", ".join(
            f"{v:.0f}" for v in result["phases"]["all_with_hostile"]["latency_ms_p99_per_round"]
        )
        totals: dict[str, int] = {}
        for report in result["hostile"]:
            for key, value in report.items():
                if key != "cpu_percent":
                    totals[key] = totals.get(key, 0) + value
        worst = max(
            result["hostile_p50_change"],
            result["hostile_p99_change"],
            -result["hostile_rate_change"],
        )
        print(
            f"hostile phase: the well-behaved clients' p50 moved by "
            f"{result['hostile_p50_change']:+.1%}, p99 by {result['hostile_p99_change']:+.1%} "
            f"(p99 per round {rounds_h}), their rate by {result['hostile_rate_change']:+.1%} "
            f"(target: each at most 10 % worse: {'met' if worst <= 0.10 else 'not met'}); "
            f"the hostile process's own CPU {result['hostile_process_cpu_percent']:.0f} %. "
            "What the hostile clients did and got: "
            + ", ".join(f"{k} {v}" for k, v in sorted(totals.items()))
        )
    slows = result["slow_client"]
    told = sorted({state for slow in slows for state in slow["states"]}) or ["none"]
    buffered = max(s["server_view"]["buffered_bytes"] for s in slows)
    print(
        f"slow client ({len(slows)} rounds): read {min(s['received'] for s in slows)}-"
        f"{max(s['received'] for s in slows)} messages a round "
        f"({np.mean([s['rate_hz'] for s in slows]):.1f}/s); backpressure states it was "
        f"told: {', '.join(told)}; closed by the server: "
        f"{sum(s['closed'] is not None for s in slows)} times; all the server's client "
        f"buffers at each round's end: <= {buffered:,} bytes"
    )


if __name__ == "__main__":
    raise SystemExit(main())
