"""``make bench-restore``: a stream worker's restore time, after short and long runs.

A worker restored after a crash reads its changelog partitions (``kestrel.state``).
The changelogs are compacted (one live record per source, not one per window), so a
restore should read the live keys plus the tail compaction has not reached yet, and
take as long after an hour as after a minute. This run measures it: the project's
broker, one stream worker fed live (``--sources`` model sources at 60 Hz in 100 ms
batches, as ``bench-telemetry`` feeds it), killed with SIGKILL and restarted at each
checkpoint (``--checkpoints`` minutes of uptime). At each it reads the worker's own
restore lines (records read, seconds) beside what the changelog holds in all (every
record ever written: what a restore without compaction would read).

Prints a table and writes ``bench/results/restore.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.telemetry import RESULTS, broker_settings, messages, start_broker
from kestrel.settings import Settings, load_settings
from kestrel.topics import METRICS_MODEL, STATE_WINDOWS
from tests.kafka_helpers import FaustWorker

RESTORED = re.compile(r"windows\[(\d+)\] restored: (\d+) records read .* in ([\d.]+) s")
ROWS = 6


def feed(settings: Settings, sources: int, stop: threading.Event, sent: list[int]) -> None:
    """Every source's 100 ms batch, ten times a second of wall time, until ``stop``."""
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5})
    topic = METRICS_MODEL.name(settings)
    tick, next_at = 0, time.monotonic()
    while not stop.is_set():
        for key, value in messages(sources, tick, 1, seed=tick):
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        sent[0] += sources
        tick += 1
        next_at += ROWS / 60
        stop.wait(max(0.0, next_at - time.monotonic()))  # pacing a live load generator
    producer.flush(30)


def changelog_records(settings: Settings) -> int:
    """Records ever written to the windows changelog (high minus low watermark, summed
    before compaction removes any; an upper bound after)."""
    consumer = Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": "restore-bench"}
    )
    try:
        topic = STATE_WINDOWS.name(settings)
        total = 0
        for p in range(settings.topic_partitions):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high
        return total
    finally:
        consumer.close()


def restart(worker: FaustWorker, partitions: int, timeout_s: float = 180.0) -> dict[str, float]:
    """SIGKILL, start again, and read the restore figures from the new worker's log."""
    worker.kill()
    started = time.monotonic()
    worker.start(ready_timeout_s=timeout_s)
    deadline = started + timeout_s
    while True:
        found = {
            int(m[0]): (int(m[1]), float(m[2])) for m in RESTORED.findall(worker.log_since_start())
        }
        if len(found) == partitions:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(found)} of {partitions} partitions restored")
        time.sleep(0.2)  # polling the worker's log for a condition
    return {
        "records_read": sum(r for r, _ in found.values()),
        "restore_s_max": max(s for _, s in found.values()),
        "restore_s_sum": sum(s for _, s in found.values()),
        "restart_to_restored_s": time.monotonic() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=50)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--checkpoints", type=float, nargs="+", default=[1, 5, 15, 30], help="minutes of uptime"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "restore.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kestrel-bench-restore-"))
    broker = start_broker(workdir, load_settings())
    rows: list[dict[str, Any]] = []
    stop = threading.Event()
    try:
        settings = broker_settings(
            broker, workdir, "restore", topic_partitions=args.partitions, flush_interval_s=1.0
        )
        worker = FaustWorker(settings, workdir / "worker.log")
        worker.start(ready_timeout_s=120)
        sent = [0]
        feeder = threading.Thread(target=feed, args=(settings, args.sources, stop, sent))
        feeder.start()
        started = time.monotonic()
        for minutes in args.checkpoints:
            stop.wait(max(0.0, started + minutes * 60 - time.monotonic()))  # the run's length
            written = changelog_records(settings)
            figures = restart(worker, args.partitions)
            row = {"uptime_min": minutes, "changelog_records_written": written, **figures}
            rows.append(row)
            print(
                f"  after {minutes:g} min: {figures['records_read']:,} records read of "
                f"{written:,} written, restore {figures['restore_s_max']:.2f} s",
                flush=True,
            )
        stop.set()
        feeder.join()
        worker.stop()
    finally:
        stop.set()
        broker.stop()
    print()
    print(f"{'uptime':>8} {'written':>12} {'read':>10} {'restore s':>10} {'restart s':>10}")
    for row in rows:
        print(
            f"{row['uptime_min']:>6g} m {row['changelog_records_written']:>12,} "
            f"{row['records_read']:>10,} {row['restore_s_max']:>10.2f} "
            f"{row['restart_to_restored_s']:>10.1f}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {platform.system()}",
                "sources": args.sources,
                "partitions": args.partitions,
                "samples_per_s": args.sources * 60,
                "checkpoints": rows,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
