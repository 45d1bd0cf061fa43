"""``make bench-telemetry``: Kestrel's telemetry stage against its limit and Quix Streams.

One run, one broker (the project's own), one topic, the same messages for all three:

(a) **raw**: a plain aiokafka consumer that decodes every message and does nothing
    else, the limit of reading this topic in Python;
(b) **kestrel**: the stream worker (``faust -A faust_app worker``), all windows;
(c) **quix**: the same job in Quix Streams (bench/quix_job.py): as its docs show it,
    and as an expert writes it for columnar batch messages (the one compared);
(d) **faust**: the same job in plain Faust with its windowed tables (bench/faust_job.py).

Input: ``--sources`` model sources at 60 Hz, published in 100 ms batches (6 samples of
the digest's 9 model fields a message), for ``--seconds`` of event time, produced
before the consumers start (a backlog). Throughput is measured from the consumer
group's committed offsets, between 10 % and 100 % of the input, so start-up is not
counted. A second phase feeds Kestrel's running worker at a steady rate and reads
its own latency figures: production (CreateTime) to presence in the running 1 s
window. Prints a table and writes ``bench/results/telemetry.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.workload import FIELDS
from kestrel.broker import BrokerConfig, LocalKafka, fetch_jars
from kestrel.collectors.publisher import batch_envelope
from kestrel.settings import Settings, child_environment, load_settings
from kestrel.topics import METRICS_MODEL, ensure_topics

REPO = Path(__file__).resolve().parent.parent
QUIX_VARIANTS = ("agg", "one-aggregator", "columnar")
# What each consumer keeps and how it runs (the JSON carries it beside the figures).
CONSUMERS = {
    "raw": {"state": "none", "gc": "default", "delivery": "none (no commits)"},
    "kestrel": {
        "state": "in memory + compacted changelog, Kafka transactions",
        "gc": "gc.freeze() at start, thresholds (20000, 20, 20) (agents/telemetry.py)",
        "delivery": "exactly once",
    },
    "quix": {
        "state": "RocksDB + changelog topic",
        "gc": "default",
        "delivery": "at least once",
    },
    "faust": {
        "state": "in memory + changelog topic (Faust tables, memory://)",
        "gc": "default",
        "delivery": "at least once",
    },
}
RESULTS = REPO / "bench" / "results"
ROWS = 6  # 100 ms of a 60 Hz source; --rows-per-message changes it
BASE_MS = 1_700_000_100_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_broker(workdir: Path, defaults: Settings) -> LocalKafka:
    """The project's own broker on free ports, its data under ``workdir``, started."""
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
    return broker


def broker_settings(broker: LocalKafka, workdir: Path, prefix: str, **overrides: Any) -> Settings:
    """Settings on ``broker`` in a fresh namespace, data under ``workdir``; topics made."""
    settings = load_settings(
        broker_url=f"kafka://{broker.cfg.bootstrap_servers}",
        namespace=f"{prefix}{uuid.uuid4().hex[:6]}",
        data_dir=workdir,
        **overrides,
    )
    ensure_topics(settings)
    return settings


def messages(sources: int, first_tick: int, ticks: int, seed: int) -> list[tuple[bytes, bytes]]:
    """``ticks`` batches of every source, in time order as live collectors send.

    A batch holds ``ROWS`` samples at 60 Hz: 100 ms for 6 rows, 1 s for 60.
    """
    rng = np.random.default_rng(seed)
    out = []
    for tick in range(first_tick, first_tick + ticks):
        values = rng.gamma(2.0, 50.0, size=(sources, ROWS, len(FIELDS))).round(3)
        for s in range(sources):
            source = f"model:bench{s}"
            rows = [
                (
                    BASE_MS + tick * ROWS * 1000 // 60 + r * 1000 // 60,
                    dict(zip(FIELDS, values[s, r].tolist(), strict=True)),
                )
                for r in range(ROWS)
            ]
            out.append((source.encode(), batch_envelope(source, rows)))
    return out


def produce(settings: Settings, batch: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5})
    for key, value in batch:
        while True:
            try:
                producer.produce(METRICS_MODEL.name(settings), value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0


class PeakRss:
    """Polls a process's resident memory (MB) until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / 2**20)
            except psutil.NoSuchProcess:
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


MIN_COMMIT_STEPS = 3  # a span timed by its commits needs a few of them


def wait_committed(
    settings: Settings, group: str, total: int, timeout_s: float, proc: subprocess.Popen[bytes]
) -> tuple[float, float]:
    """Seconds and messages between 10 % and 100 % of ``total`` committed by ``group``."""
    topic = METRICS_MODEL.name(settings)
    partitions = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group})
    start: tuple[float, int] | None = None
    steps = 0  # commits seen after the start: the timing's resolution
    last = 0
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = LOGS.get(proc.pid)
                tail = "" if log is None else "\n".join(log.read_text().splitlines()[-30:])
                raise RuntimeError(f"{group} exited with {proc.returncode}; its log ends:\n{tail}")
            try:
                done = sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=5))
            except Exception:  # the group coordinator is still moving; ask again
                time.sleep(0.2)
                continue
            now = time.monotonic()
            if os.environ.get("BENCH_DEBUG") and done != last:  # a job's commit cadence
                print(f"    {group}: {done} committed at {now:.2f}", flush=True)
            if start is None and done >= total * 0.1:
                start = (now, done)
            elif start is not None and done > last:
                steps += 1
            last = done
            if done >= total and start is not None:
                if steps < MIN_COMMIT_STEPS:
                    raise RuntimeError(
                        f"{group} went from 10 % to 100 % in {steps} commits: too little "
                        "input to time; raise --sources or --seconds"
                    )
                return now - start[0], float(done - start[1])
            time.sleep(0.05)
    finally:
        consumer.close()
    raise TimeoutError(f"{group} did not commit {total} messages within {timeout_s}s")


async def run_raw(settings: Settings, total: int) -> dict[str, float]:
    """(a) The limit: aiokafka, decode each message, count its values, nothing else."""
    consumer = AIOKafkaConsumer(
        METRICS_MODEL.name(settings),
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"raw-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen = samples = 0
    started = 0.0
    try:
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batches.values():
                for record in records:
                    if seen == int(total * 0.1):
                        started, samples = time.monotonic(), 0
                    message = orjson.loads(record.value or b"{}")
                    columns = message.get("samples", {}).get("data", {})
                    samples += sum(1 for col in columns.values() for v in col if v is not None)
                    seen += 1
        elapsed = time.monotonic() - started
    finally:
        await consumer.stop()
    return {
        "seconds": elapsed,
        "samples_per_s": samples / elapsed,
        "messages_per_s": total * 0.9 / elapsed,
    }


LOGS: dict[int, Path] = {}  # each started process's log, for the error if it dies


def start_process(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    LOGS[proc.pid] = log
    return proc


def run_consumer_job(
    name: str,
    settings: Settings,
    group: str,
    total: int,
    samples_per_message: int,
    start: Callable[[], subprocess.Popen[bytes]],
    timeout_s: float,
) -> tuple[dict[str, float], subprocess.Popen[bytes], PeakRss]:
    proc = start()
    rss = PeakRss(proc.pid)
    try:
        seconds, counted = wait_committed(settings, group, total, timeout_s, proc)
    except BaseException:
        stop(proc)  # no job left behind holding the broker or a port
        raise
    print(f"  {name}: {counted / seconds:,.0f} messages/s", flush=True)
    return (
        {
            "seconds": seconds,
            "messages_per_s": counted / seconds,
            "samples_per_s": counted * samples_per_message / seconds,
        },
        proc,
        rss,
    )


def run_faust_job(
    name: str, settings: Settings, partitions: int, workdir: Path, total: int, *, empty: bool
) -> dict[str, float]:
    """bench/faust_job.py on the input (``empty``: its agent does nothing)."""
    group = f"{settings.namespace}-faust-{'empty' if empty else 'baseline'}"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "BENCH_FAUST_GROUP": group,
        "BENCH_FAUST_BOOTSTRAP": settings.bootstrap_servers,
        "BENCH_FAUST_TOPIC": METRICS_MODEL.name(settings),
        "BENCH_FAUST_OUTPUT": settings.topic("bench.faust"),
        "BENCH_FAUST_PARTITIONS": str(partitions),
        "BENCH_FAUST_DATADIR": str(workdir / group),
        "BENCH_FAUST_EMPTY": "1" if empty else "0",
    }
    argv = [sys.executable, "-m", "faust", "-A", "bench.faust_job", "worker", "-l", "warn"]
    job, proc, peak = run_consumer_job(
        name,
        settings,
        group,
        total,
        ROWS * len(FIELDS),
        lambda: start_process(argv, env, workdir / f"{group}.log"),
        timeout_s=1800,
    )
    job["peak_rss_mb"] = peak.stop()
    stop(proc)
    return job


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def steady_latency(settings: Settings, sources: int, seconds: int, first_tick: int) -> int:
    """Feed every source's batches in real time (one per ROWS/60 s); return how many."""
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 1})
    topic = METRICS_MODEL.name(settings)
    period = ROWS / 60
    ticks = round(seconds / period)
    next_at = time.monotonic()
    for tick in range(first_tick, first_tick + ticks):
        for key, value in messages(sources, tick, 1, seed=tick):
            producer.produce(topic, value, key)
        producer.poll(0)
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))  # pacing a load generator
    producer.flush(30)
    return ticks * sources


def main() -> int:
    global ROWS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=60, help="event time of the backlog")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--latency-sources", type=int, default=50)
    parser.add_argument("--latency-seconds", type=int, default=30)
    parser.add_argument("--skip-quix", action="store_true")
    parser.add_argument(
        "--quix-variants",
        type=lambda v: v.split(","),
        default=list(QUIX_VARIANTS),
        help=f"of {','.join(QUIX_VARIANTS)} (bench/quix_job.py)",
    )
    parser.add_argument(
        "--row-form-messages",
        type=int,
        default=15_000,
        help="the Quix row-per-sample forms are timed over this many of the input's first "
        "messages (they are about 50x slower than the others)",
    )
    parser.add_argument("--skip-faust", action="store_true")
    parser.add_argument(
        "--flush-interval-s",
        type=float,
        default=None,
        help="the stream worker's KESTREL_FLUSH_INTERVAL_S (default: the setting's) and the "
        "most between its commits; its offsets advance once a flush, so a small run needs a "
        "short one to be timed",
    )
    parser.add_argument(
        "--rows-per-message", type=int, default=6, help="6: 100 ms batches at 60 Hz"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "telemetry.json")
    args = parser.parse_args()
    ROWS = args.rows_per_message  # one run, one message shape
    if args.latency_seconds < 15:
        parser.error(
            "--latency-seconds must be at least 15: the worker reports latency over its "
            "last 10 s, which must not reach back into the backlog"
        )

    workdir = Path(tempfile.mkdtemp(prefix="kestrel-bench-"))
    defaults = load_settings()
    broker = start_broker(workdir, defaults)
    results: dict[str, Any] = {}
    try:
        flush = {} if args.flush_interval_s is None else {"flush_interval_s": args.flush_interval_s}
        # Offsets are committed at least as often as the worker flushes: the timing is
        # read from the commits, and its resolution is their interval.
        commit_interval_s = min(0.5, args.flush_interval_s or 0.5)
        settings = broker_settings(
            broker,
            workdir,
            "bench",
            topic_partitions=args.partitions,
            commit_interval_s=commit_interval_s,
            stats_path=workdir / "kestrel-stats.json",
            **flush,
        )
        ticks = args.seconds * 60 // ROWS
        print(f"generating {args.sources} sources x {ticks} batches ...", flush=True)
        batch = messages(args.sources, 0, ticks, seed=1)
        total = len(batch)
        samples_per_message = ROWS * len(FIELDS)
        produce(settings, batch)
        del batch
        print(f"produced {total:,} messages, {total * samples_per_message:,} samples", flush=True)

        raw = asyncio.run(run_raw(settings, total))
        print(f"  raw: {raw['messages_per_s']:,.0f} messages/s", flush=True)

        env = child_environment(settings, PYTHONUNBUFFERED="1")
        kestrel, worker, worker_rss = run_consumer_job(
            "kestrel",
            settings,
            settings.app_id("windows"),  # the windows stage's own group (kestrel.reader)
            total,
            samples_per_message,
            lambda: start_process(
                [sys.executable, "-m", "faust", "-A", "faust_app", "worker", "-l", "warn"],
                env,
                workdir / "kestrel-worker.log",
            ),
            timeout_s=900,
        )
        # Phase 2: the same worker, fed live at a steady rate.
        before = orjson.loads((workdir / "kestrel-stats.json").read_bytes())["latency_count"]
        fed = steady_latency(settings, args.latency_sources, args.latency_seconds, ticks + 50)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = orjson.loads((workdir / "kestrel-stats.json").read_bytes())
            if stats["latency_count"] - before >= fed:
                break
            time.sleep(0.5)
        stats = orjson.loads((workdir / "kestrel-stats.json").read_bytes())

        kestrel_rss = worker_rss.stop()
        stop(worker)

        quix: dict[str, dict[str, float]] = {}
        quix_python = REPO / ".venv-quix" / "bin" / "python"
        for variant in [] if args.skip_quix else args.quix_variants:
            group = f"{settings.namespace}-quix-{variant}"
            # The row-per-sample forms run at a fiftieth of the others' rate: they are
            # timed over the input's first messages (same shape, a shorter span).
            timed = total if variant == "columnar" else min(total, args.row_form_messages)
            job, quix_proc, quix_peak = run_consumer_job(
                f"quix ({variant})",
                settings,
                group,
                timed,
                samples_per_message,
                lambda group=group, variant=variant: start_process(  # type: ignore[misc]
                    [
                        str(quix_python),
                        str(REPO / "bench" / "quix_job.py"),
                        "--bootstrap",
                        settings.bootstrap_servers,
                        "--topic",
                        METRICS_MODEL.name(settings),
                        "--output",
                        settings.topic(f"bench.quix.{variant}"),
                        "--group",
                        group,
                        "--state-dir",
                        str(workdir / f"quix-state-{variant}"),
                        "--variant",
                        variant,
                    ],
                    {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                    workdir / f"quix-{variant}.log",
                ),
                timeout_s=1800,
            )
            job["peak_rss_mb"] = quix_peak.stop()
            job["messages_timed"] = timed
            quix[variant] = job
            stop(quix_proc)
        # The comparison is against the faster Quix variant.
        best = max(quix.values(), key=lambda q: q["samples_per_s"]) if quix else None

        faust: dict[str, float] | None = None
        faust_empty: dict[str, float] | None = None
        if not args.skip_faust:
            faust = run_faust_job(
                "plain faust", settings, args.partitions, workdir, total, empty=False
            )
            # The same app with an agent that does nothing: what Faust's path from Kafka
            # to an agent costs alone (kestrel/reader.py says why Kestrel's windows
            # stage does not take it).
            faust_empty = run_faust_job(
                "faust, empty agent", settings, args.partitions, workdir, total, empty=True
            )
        peers = {f"quix ({name})": q for name, q in quix.items()}
        if faust is not None:
            peers["plain faust"] = faust
        best_peer = max(peers, key=lambda name: peers[name]["samples_per_s"]) if peers else None

        results = {
            "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
            "input": {
                "sources": args.sources,
                "event_seconds": args.seconds,
                "messages": total,
                "samples_per_message": samples_per_message,
                "samples": total * samples_per_message,
                "partitions": args.partitions,
                "flush_interval_s": settings.flush_interval_s,
            },
            "raw_samples_per_s": raw["samples_per_s"],
            "raw_messages_per_s": raw["messages_per_s"],
            "kestrel_samples_per_s": kestrel["samples_per_s"],
            "kestrel_messages_per_s": kestrel["messages_per_s"],
            "quix_samples_per_s": best["samples_per_s"] if best else None,
            "quix_messages_per_s": best["messages_per_s"] if best else None,
            "quix_variants": quix,
            "kestrel_vs_quix": kestrel["samples_per_s"] / best["samples_per_s"] if best else None,
            "faust_samples_per_s": faust["samples_per_s"] if faust else None,
            "faust_messages_per_s": faust["messages_per_s"] if faust else None,
            "faust_peak_rss_mb": faust["peak_rss_mb"] if faust else None,
            "faust_empty_agent_samples_per_s": faust_empty["samples_per_s"]
            if faust_empty
            else None,
            "faust_empty_agent_messages_per_s": faust_empty["messages_per_s"]
            if faust_empty
            else None,
            "faust_empty_agent_peak_rss_mb": faust_empty["peak_rss_mb"] if faust_empty else None,
            "kestrel_vs_faust": kestrel["samples_per_s"] / faust["samples_per_s"]
            if faust
            else None,
            "best_peer": best_peer,
            "kestrel_vs_best_peer": kestrel["samples_per_s"] / peers[best_peer]["samples_per_s"]
            if best_peer
            else None,
            "consumers": CONSUMERS,
            "latency_load": {
                "sources": args.latency_sources,
                "messages_per_s": args.latency_sources * 60 // ROWS,
                "samples_per_s": args.latency_sources * 60 * len(FIELDS),
                "seconds": args.latency_seconds,
            },
            "kestrel_stats_after_latency_phase": stats,
            "latency_ms_p50": stats["latency_ms_p50"],
            "latency_ms_p99": stats["latency_ms_p99"],
            "peak_rss_mb": kestrel_rss,
        }
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    rows = [
        ("", "samples/s", "messages/s", "peak RSS MB", "state"),
        (
            "raw aiokafka (limit)",
            f"{results['raw_samples_per_s']:,.0f}",
            f"{results['raw_messages_per_s']:,.0f}",
            "-",
            CONSUMERS["raw"]["state"],
        ),
        (
            "kestrel",
            f"{results['kestrel_samples_per_s']:,.0f}",
            f"{results['kestrel_messages_per_s']:,.0f}",
            f"{results['peak_rss_mb']:.0f}",
            CONSUMERS["kestrel"]["state"],
        ),
    ]
    for variant, q in quix.items():
        rows.append(
            (
                f"quix streams, {variant}",
                f"{q['samples_per_s']:,.0f}",
                f"{q['messages_per_s']:,.0f}",
                f"{q['peak_rss_mb']:.0f}",
                CONSUMERS["quix"]["state"],
            )
        )
    if faust is not None:
        rows.append(
            (
                "plain faust, windowed tables",
                f"{faust['samples_per_s']:,.0f}",
                f"{faust['messages_per_s']:,.0f}",
                f"{faust['peak_rss_mb']:.0f}",
                CONSUMERS["faust"]["state"],
            )
        )
    if faust_empty is not None:
        rows.append(
            (
                "faust, empty agent (its limit)",
                f"{faust_empty['samples_per_s']:,.0f}",
                f"{faust_empty['messages_per_s']:,.0f}",
                f"{faust_empty['peak_rss_mb']:.0f}",
                "none",
            )
        )
    print()
    for row in rows:
        print(f"{row[0]:30} {row[1]:>14} {row[2]:>12} {row[3]:>12}  {row[4]}")
    print(
        f"\nkestrel latency, production -> running 1 s window, at "
        f"{results['latency_load']['samples_per_s']:,} samples/s: "
        f"p50 {results['latency_ms_p50']:.1f} ms, p99 {results['latency_ms_p99']:.1f} ms"
    )
    if results["kestrel_vs_quix"]:
        print(f"kestrel / fastest quix: {results['kestrel_vs_quix']:.1f}x")
    if results["kestrel_vs_faust"]:
        print(f"kestrel / plain faust: {results['kestrel_vs_faust']:.1f}x")
    if results["best_peer"]:
        print(
            f"kestrel / best peer ({results['best_peer']}): {results['kestrel_vs_best_peer']:.1f}x"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
