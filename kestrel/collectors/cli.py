"""``kestrel-collect system``: publish this host's metrics to the system collector topic."""

from __future__ import annotations

import argparse
import logging
import sys
import time

import orjson

from kestrel.collectors.system import SystemSampler
from kestrel.process import stop_on_signals
from kestrel.producer import KestrelProducer
from kestrel.settings import get_settings
from kestrel.topics import METRICS_SYSTEM

log = logging.getLogger(__name__)


def envelope(source: str, timestamp_ms: int, data: dict[str, float | None]) -> bytes:
    """The digest's collector envelope as JSON bytes."""
    return orjson.dumps(
        {"timestamp": timestamp_ms, "source": source, "type": "metrics", "data": data}
    )


def run_system(rate_hz: float, duration_s: float | None) -> int:
    """Sample at ``rate_hz`` on a fixed schedule until stopped (or for ``duration_s``)."""
    settings = get_settings()
    producer = KestrelProducer(settings)
    topic = METRICS_SYSTEM.name(settings)
    sampler = SystemSampler()
    stop = stop_on_signals()
    period = 1.0 / rate_hz
    started = next_at = time.monotonic()
    sent = 0
    log.info("system collector: %.0f Hz to %s on %s", rate_hz, topic, settings.bootstrap_servers)
    while not stop.is_set() and (duration_s is None or time.monotonic() - started < duration_s):
        now_ms = time.time_ns() // 1_000_000
        producer.send(
            topic, envelope("system", now_ms, sampler.sample()), b"system", timestamp_ms=now_ms
        )
        sent += 1
        next_at += period
        # A fixed schedule, not sleep(period): sampling time does not stretch the rate.
        stop.wait(max(0.0, next_at - time.monotonic()))
    undelivered = producer.flush()
    log.info(
        "system collector stopped: %d sent, %d failed, %d undelivered",
        sent,
        producer.failed,
        undelivered,
    )
    return 0 if producer.failed == 0 and undelivered == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kestrel-collect", description=__doc__)
    parser.add_argument("collector", choices=["system"])
    parser.add_argument("--rate-hz", type=float, default=10.0)
    parser.add_argument("--duration-s", type=float, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run_system(args.rate_hz, args.duration_s)


if __name__ == "__main__":
    sys.exit(main())
