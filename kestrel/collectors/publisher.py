"""One source's samples, batched: many samples a second, one Kafka message an interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from kestrel.producer import KestrelProducer

log = logging.getLogger(__name__)


def batch_envelope(source: str, rows: Sequence[tuple[int, Mapping[str, float | None]]]) -> bytes:
    """The digest's envelope for the latest row, with every row in ``samples``.

    ``rows`` are ``(timestamp_ms, {field: value})`` in timestamp order; a field missing
    from a row is null there.
    """
    names = sorted({name for _, data in rows for name in data})
    latest_ts, latest = rows[-1]
    message: dict[str, Any] = {
        "timestamp": latest_ts,
        "source": source,
        "type": "metrics",
        "data": {name: latest.get(name) for name in names},
    }
    if len(rows) > 1:
        message["samples"] = {
            "timestamp": [ts for ts, _ in rows],
            "data": {name: [data.get(name) for _, data in rows] for name in names},
        }
    return orjson.dumps(message)


class BatchingPublisher:
    """Collects one source's samples and publishes them every ``interval_s``.

    ``record`` is thread-safe and never blocks on Kafka. Samples beyond ``max_hz`` in
    one second are dropped here and counted, since the stream worker would refuse the
    whole message they came in.
    """

    def __init__(
        self,
        producer: KestrelProducer,
        topic: str,
        source: str,
        *,
        interval_s: float = 0.1,
        max_hz: float = 60.0,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.source = source
        self.interval_s = interval_s
        self.max_per_second = int(max_hz)
        self.dropped = 0
        self.published = 0
        self._rows: list[tuple[int, Mapping[str, float | None]]] = []
        self._lock = threading.Lock()
        self._second = -1
        self._in_second = 0
        self._last_publish = time.monotonic()

    def record(self, data: Mapping[str, float | None], timestamp_ms: int | None = None) -> bool:
        """Add one sample (now, unless ``timestamp_ms``); False if over budget."""
        ts = time.time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms
        with self._lock:
            second = ts // 1000
            if second != self._second:
                self._second, self._in_second = second, 0
            if self._in_second >= self.max_per_second:
                self.dropped += 1
                return False
            self._in_second += 1
            if self._rows and ts < self._rows[-1][0]:
                ts = self._rows[-1][0]  # keep the batch ordered if the clock steps back
            self._rows.append((ts, dict(data)))
        return True

    def publish_due(self) -> None:
        """Publish the pending samples if the interval has passed."""
        if time.monotonic() - self._last_publish >= self.interval_s:
            self.publish()

    def publish(self) -> None:
        """Publish the pending samples now, as one message."""
        with self._lock:
            rows, self._rows = self._rows, []
            self._last_publish = time.monotonic()
        if rows:
            self.producer.send(
                self.topic,
                batch_envelope(self.source, rows),
                self.source.encode(),
                timestamp_ms=rows[-1][0],
            )
            self.published += len(rows)
