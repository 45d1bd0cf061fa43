"""``kestrel-collect``: publish metrics to Kestrel's collector topics.

* ``kestrel-collect system``: this host's metrics (psutil) at 10 Hz.
* ``kestrel-collect model --source model:NAME``: metrics of any model server, one JSON
  object per line on standard input, e.g. piped from its log::

      {"tokens_per_second": 41.5, "ttft_ms": 180, "queue_wait_ms": 3.2}

  An optional ``"timestamp"`` (epoch ms) sets the event time; otherwise it is now.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import TextIO

import orjson

from kestrel.collectors.model import ModelMetrics
from kestrel.collectors.publisher import BatchingPublisher
from kestrel.collectors.system import SystemSampler
from kestrel.process import stop_on_signals
from kestrel.producer import KestrelProducer
from kestrel.settings import get_settings
from kestrel.topics import METRICS_SYSTEM

log = logging.getLogger(__name__)


def run_system(rate_hz: float, publish_interval_s: float, duration_s: float | None) -> int:
    """Sample at ``rate_hz`` on a fixed schedule until stopped (or for ``duration_s``)."""
    settings = get_settings()
    producer = KestrelProducer(settings)
    publisher = BatchingPublisher(
        producer,
        METRICS_SYSTEM.name(settings),
        "system",
        interval_s=publish_interval_s,
        max_hz=settings.source_max_hz,
    )
    sampler = SystemSampler()
    stop = stop_on_signals()
    period = 1.0 / rate_hz
    started = next_at = time.monotonic()
    log.info("system collector: %.0f Hz to %s", rate_hz, publisher.topic)
    while not stop.is_set() and (duration_s is None or time.monotonic() - started < duration_s):
        publisher.record(sampler.sample())  # psutil blocks briefly; this is its own process
        publisher.publish_due()
        next_at += period
        # A fixed schedule, not sleep(period): sampling time does not stretch the rate.
        stop.wait(max(0.0, next_at - time.monotonic()))
    publisher.publish()
    undelivered = producer.flush()
    log.info(
        "system collector stopped: %d samples, %d failed deliveries, %d undelivered",
        publisher.published,
        producer.failed,
        undelivered,
    )
    return 0 if producer.failed == 0 and undelivered == 0 else 1


def run_model(source: str, lines: TextIO) -> int:
    """Publish one sample per JSON line of ``lines`` until it ends."""
    bad = 0
    with ModelMetrics(source) as metrics:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                sample = orjson.loads(line)
                if not isinstance(sample, dict):
                    raise ValueError("expected a JSON object")
                timestamp = sample.pop("timestamp", None)
                values = {str(k): None if v is None else float(v) for k, v in sample.items()}
            except (ValueError, TypeError) as exc:
                bad += 1
                print(f"kestrel-collect: line {number} skipped: {exc}", file=sys.stderr)
                continue
            metrics.record(None if timestamp is None else int(timestamp), **values)
        if metrics.dropped:
            print(
                f"kestrel-collect: {metrics.dropped} samples over "
                f"{metrics.settings.source_max_hz:g}/s were dropped",
                file=sys.stderr,
            )
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kestrel-collect",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="collector", required=True)
    system = sub.add_parser("system", help="this host's metrics")
    system.add_argument("--rate-hz", type=float, default=10.0)
    system.add_argument("--publish-interval-s", type=float, default=0.1)
    system.add_argument("--duration-s", type=float, default=None)
    model = sub.add_parser("model", help="a model server's metrics, JSON lines on stdin")
    model.add_argument("--source", required=True, help="model:<name>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.collector == "system":
        return run_system(args.rate_hz, args.publish_interval_s, args.duration_s)
    return run_model(args.source, sys.stdin)


if __name__ == "__main__":
    sys.exit(main())
