"""The telemetry stage's state of one partition, and its changelog records.

Task ``p`` of the windows stage (:mod:`kestrel.state`) owns partition ``p`` of every
collector topic. Per topic it keeps the windows of each source
(:class:`tables.windows.PartitionWindows`), each source's rate-limit counts and the
partition's stream time. Changelog records (compacted, in changelog partition ``p``):

=========================  ===================================================
``s|<topic>|<source>``     ``{"w": open windows, "r": samples per second}``;
                           a tombstone once the source has no open window
``t|<topic>``              ``{"t": stream time}``
=========================  ===================================================

One record per source rather than per window: closing a window rewrites its source's
record instead of leaving a tombstone per window behind, so the changelog holds about
one live record per source, and a restore reads that much (plus the tail compaction
has not reached yet) however long the worker has run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from kestrel.ratelimit import SourceRateLimiter
from kestrel.schemas import WindowAggregate
from kestrel.state import Restored
from tables.windows import ClosedWindow, PartitionWindows, WindowKey, WindowSpec, WindowState


def aggregate_fields(key: WindowKey, state: WindowState, size_ms: int) -> dict[str, Any]:
    """The published, final form of a closed window, field by field (the schema's order)."""
    return {
        "source": key.source,
        "field": key.field,
        "window": key.window,
        "window_start_ms": key.start_ms,
        "window_end_ms": key.start_ms + size_ms,
        **state.stats(),
    }


def to_aggregate(key: WindowKey, state: WindowState, size_ms: int) -> WindowAggregate:
    """The published form as the schema's model (validated)."""
    return WindowAggregate(**aggregate_fields(key, state, size_ms))


def aggregate_json(key: WindowKey, state: WindowState, size_ms: int) -> bytes:
    """The published form, encoded: the same bytes as ``to_aggregate(...).model_dump_json()``.

    The stage emits about one aggregate a message, and building the pydantic model to
    encode it cost a quarter of the emission (``make bench-telemetry``'s profile); the
    statistics are already of the schema's types, and a property test holds the two
    encodings equal (tests/unit/test_metric_windows.py).
    """
    return orjson.dumps(aggregate_fields(key, state, size_ms), option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass
class TopicWindows:
    """One collector topic's partition: its windows, rate counts and stream time."""

    windows: PartitionWindows
    limiter: SourceRateLimiter
    #: Sources whose rate counts changed (their windows track their own changes).
    counted: set[str] = field(default_factory=set)
    stream_time_written: int | None = None

    def admit(self, source: str, timestamps: list[int]) -> bool:
        self.counted.add(source)
        return self.limiter.admit(source, timestamps)


class TelemetryPartition:
    """The windows stage's state of partition ``p``: one :class:`TopicWindows` per topic."""

    def __init__(self, partition: int, specs: tuple[WindowSpec, ...], max_hz: float) -> None:
        self.partition = partition
        self.specs = specs
        self.max_hz = max_hz
        self.topics: dict[str, TopicWindows] = {}

    def topic(self, suffix: str) -> TopicWindows:
        found = self.topics.get(suffix)
        if found is None:
            found = self.topics[suffix] = TopicWindows(
                PartitionWindows(self.partition, self.specs), SourceRateLimiter(self.max_hz)
            )
        return found

    def close_due(self) -> Iterator[ClosedWindow]:
        for topic in self.topics.values():
            yield from topic.windows.close_due()

    def changes(self) -> Iterator[tuple[bytes, bytes | None]]:
        """State records of everything changed since the last call."""
        for suffix, topic in self.topics.items():
            windows = topic.windows
            for source in windows.take_dirty() | topic.counted:
                key = f"s|{suffix}|{source}".encode()
                open_windows = windows.source_json(source)
                if open_windows is None:
                    topic.limiter.forget(source)
                    yield key, None
                else:
                    record = {"w": open_windows, "r": topic.limiter.counts(source)}
                    yield key, orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS)
            topic.counted.clear()
            if windows.stream_time_ms != topic.stream_time_written:
                topic.stream_time_written = windows.stream_time_ms
                yield f"t|{suffix}".encode(), orjson.dumps({"t": windows.stream_time_ms})

    @classmethod
    def restore(
        cls, restored: Restored, specs: tuple[WindowSpec, ...], max_hz: float
    ) -> TelemetryPartition:
        """Rebuild the partition from its changelog records."""
        part = cls(restored.partition, specs, max_hz)
        for raw_key, raw_value in restored.records.items():
            kind, suffix, *rest = raw_key.decode().split("|", 2)
            topic = part.topic(suffix)
            value: dict[str, Any] = orjson.loads(raw_value)
            if kind == "t":
                topic.windows.stream_time_ms = topic.stream_time_written = int(value["t"])
            elif kind == "s":
                source = rest[0]
                topic.windows.restore_source(source, value["w"])
                topic.limiter.restore(source, value["r"])
        return part

    def sources(self) -> int:
        return sum(len(t.windows.sources) for t in self.topics.values())
