"""Window state of the telemetry stage, in a changelog-backed Faust table.

The table's changelog is the durable state. Records are keyed
``"<p>|<window>|<start>|<source>|<field>"`` (one window's state) and
``"<p>|~|<topic>"`` (one partition's marker) and live in changelog partition ``p``,
the input partition they belong to, so Faust recovers them into whichever worker is
assigned that partition.

The worker writes them with its C producer rather than through Faust's table API,
which costs ~150 us a record in Python (profiled); Faust still recovers the table
from the changelog on assignment, and :meth:`WindowStore.get` reads it from there.
Every record written is also put in the worker's local copy of the table
(:func:`kestrel.faust_compat.set_local`): Faust reads a changelog only while it
recovers, so without that copy a worker that keeps a partition across a rebalance
would reload that partition from what it recovered before, older than its own writes.

A flush writes every changed window and then the marker. Within one changelog
partition Kafka keeps order (idempotent producer), so a durable marker means every
record before it is durable too. The marker holds the partition's stream time and the
highest input offset whose effects are all persisted: a restarted worker skips
messages at or below it, and each window's own offset covers the messages after it.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import faust
import orjson

from faust_app import app, settings
from kestrel.faust_compat import set_local
from kestrel.producer import KestrelProducer
from kestrel.schemas import WindowAggregate, topic_suffix_for
from tables.windows import (
    PartitionWindows,
    WindowKey,
    WindowSpec,
    WindowState,
    default_specs,
)

log = logging.getLogger(__name__)

# bytes keys and values: Faust then reads the changelog raw (it picks serializers
# from key_type/value_type), and the records are orjson written by WindowStore.
state_table = cast(
    faust.Table[bytes, bytes],
    app.Table(
        "metric-window-state",
        default=None,
        partitions=settings.topic_partitions,
        key_type=bytes,
        value_type=bytes,
    ),
)


def state_key(partition: int, key: WindowKey) -> str:
    return f"{partition}|{key.window}|{key.start_ms}|{key.source}|{key.field}"


def marker_key(partition: int, topic_suffix: str) -> str:
    return f"{partition}|~|{topic_suffix}"


def parse_state_key(raw: str) -> WindowKey | None:
    """The window a state key names; None for a partition's marker."""
    parts = raw.split("|", 4)
    if parts[1] == "~":
        return None
    _, window, start, source, field = parts
    return WindowKey(source, field, window, int(start))


def to_aggregate(key: WindowKey, state: WindowState, size_ms: int) -> WindowAggregate:
    """The published, final form of a closed window."""
    return WindowAggregate(
        source=key.source,
        field=key.field,
        window=key.window,  # type: ignore[arg-type]
        window_start_ms=key.start_ms,
        window_end_ms=key.start_ms + size_ms,
        **state.stats(),
    )


class WindowStore:
    """The windows of every collector partition this worker owns, loaded on demand."""

    def __init__(self, table: faust.Table[bytes, bytes], specs: tuple[WindowSpec, ...]) -> None:
        self.table = table
        self.specs = specs
        self.partitions: dict[tuple[str, int], PartitionWindows] = {}

    def get(self, topic_suffix: str, partition: int) -> PartitionWindows:
        windows = self.partitions.get((topic_suffix, partition))
        if windows is None:
            windows = self._load(topic_suffix, partition)
            self.partitions[(topic_suffix, partition)] = windows
        return windows

    def _load(self, topic_suffix: str, partition: int) -> PartitionWindows:
        """Rebuild one partition's windows from the table Faust recovered."""
        windows = PartitionWindows(partition, self.specs)
        prefix = f"{partition}|".encode()
        marker = marker_key(partition, topic_suffix)
        for raw_key, raw_value in self.table.items():
            if not raw_key.startswith(prefix) or raw_value is None:
                continue
            name = raw_key.decode()
            value: dict[str, Any] = orjson.loads(raw_value)
            key = parse_state_key(name)
            if key is None:
                if name == marker:
                    windows.stream_time_ms = int(value["t"])
                    windows.marker_offset = windows.applied_offset = int(value["o"])
            elif topic_suffix_for(key.source) == topic_suffix:
                windows.restore(key, WindowState.from_json(value))
        if windows.marker_offset >= 0:
            log.info(
                "restored %s[%d]: %d windows, stream time %d, offset %d",
                topic_suffix,
                partition,
                len(windows.windows),
                windows.stream_time_ms,
                windows.marker_offset,
            )
        return windows

    def persist_windows(
        self, producer: KestrelProducer, windows: PartitionWindows, keys: list[WindowKey]
    ) -> None:
        """Queue the current state of some of a partition's windows."""
        changelog = self.table.changelog_topic.get_topic_name()
        p = windows.partition
        for key in keys:
            state = windows.windows.get(key)
            if state is not None:
                blob = orjson.dumps(state.to_json(), option=orjson.OPT_NON_STR_KEYS)
                self._write(producer, changelog, state_key(p, key).encode(), blob, p)

    def persist_marker(
        self,
        producer: KestrelProducer,
        topic_suffix: str,
        windows: PartitionWindows,
        gone: list[WindowKey],
        marker_offset: int,
        marker_stream_time: int,
    ) -> None:
        """Queue tombstones for forgotten windows, then the partition's marker.

        Called after every window of the flush is queued: within the changelog
        partition the marker comes last. It records ``marker_offset`` and the stream
        time at that offset, so a replay from there sees stream time move exactly as
        it did the first time.
        """
        changelog = self.table.changelog_topic.get_topic_name()
        p = windows.partition
        for key in gone:
            self._write(producer, changelog, state_key(p, key).encode(), None, p)
        if marker_offset > windows.marker_offset or gone:
            marker = orjson.dumps({"t": marker_stream_time, "o": marker_offset})
            self._write(producer, changelog, marker_key(p, topic_suffix).encode(), marker, p)
            windows.marker_offset = marker_offset

    def _write(
        self,
        producer: KestrelProducer,
        changelog: str,
        key: bytes,
        value: bytes | None,
        partition: int,
    ) -> None:
        """One changelog record, and the same change to the local copy of the table."""
        producer.send(changelog, value, key, partition=partition)
        set_local(self.table, key, value, partition)

    def drop(self, topic_suffix: str, partition: int) -> None:
        """Forget a revoked partition; its new owner recovers it from the changelog."""
        self.partitions.pop((topic_suffix, partition), None)


store = WindowStore(state_table, default_specs(round(settings.window_grace_s * 1000)))
