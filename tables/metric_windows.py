"""Window state of the telemetry stage, in a changelog-backed Faust table.

Keys start with the input partition (``"<p>|<window>|<start>|<source>|<field>"``,
and one marker ``"<p>|~|<topic>"`` per collector topic), and
:class:`PartitionKeyedTable` sends each key's changelog record to that partition.
So state can be written outside an event's context (from the flush timer), and a
rebalanced partition's state is recovered by the worker that takes the partition.

A flush writes every changed window, then the marker last: within one changelog
partition Kafka keeps order, so a durable marker means everything written before
it is durable too. The marker holds the partition's stream time and the highest
input offset whose effects are all persisted; a restarted worker skips messages at
or below it, and each window's own offset covers messages after it.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import faust

from faust_app import app, settings
from kestrel.schemas import WindowAggregate, topic_suffix_for
from tables.windows import (
    PartitionWindows,
    WindowKey,
    WindowSpec,
    WindowState,
    default_specs,
)

log = logging.getLogger(__name__)


class PartitionKeyedTable(faust.Table):  # type: ignore[type-arg]
    """A table whose keys name their own changelog partition: ``"<partition>|..."``.

    Faust otherwise takes the partition from the event being processed, which
    forbids writes from a timer and misplaces a key written while another
    partition's event is current.
    """

    def partition_for_key(self, key: Any) -> int | None:
        return int(str(key).split("|", 1)[0])


state_table = cast(
    PartitionKeyedTable,
    app.tables.add(
        PartitionKeyedTable(
            app,
            name="metric-window-state",
            default=None,
            partitions=settings.topic_partitions,
            beacon=app.tables.beacon,
        )
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

    def __init__(self, table: faust.Table[str, Any], specs: tuple[WindowSpec, ...]) -> None:
        self.table = table
        self.specs = specs
        self.partitions: dict[tuple[str, int], PartitionWindows] = {}

    def get(self, topic_suffix: str, partition: int) -> PartitionWindows:
        windows = self.partitions.get((topic_suffix, partition))
        if windows is None:
            windows = self.partitions[(topic_suffix, partition)] = self._load(
                topic_suffix, partition
            )
        return windows

    def _load(self, topic_suffix: str, partition: int) -> PartitionWindows:
        """Rebuild one partition's windows from the (recovered) table."""
        windows = PartitionWindows(partition, self.specs)
        prefix = f"{partition}|"
        for raw, value in self.table.items():
            if not str(raw).startswith(prefix):
                continue
            key = parse_state_key(str(raw))
            if key is None:
                if str(raw) == marker_key(partition, topic_suffix):
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

    def persist(self, topic_suffix: str, windows: PartitionWindows, gone: list[WindowKey]) -> None:
        """Write one partition's changes, the marker last; see the module docstring."""
        p = windows.partition
        for key in gone:
            raw = state_key(p, key)
            if raw in self.table:
                del self.table[raw]
        for key in windows.dirty:
            self.table[state_key(p, key)] = windows.windows[key].to_json()
        windows.dirty.clear()
        if windows.applied_offset > windows.marker_offset or gone:
            self.table[marker_key(p, topic_suffix)] = {
                "t": windows.stream_time_ms,
                "o": windows.applied_offset,
            }
            windows.marker_offset = windows.applied_offset

    def drop(self, topic_suffix: str, partition: int) -> None:
        """Forget a revoked partition; its new owner recovers it from the changelog."""
        self.partitions.pop((topic_suffix, partition), None)


store = WindowStore(state_table, default_specs(round(settings.window_grace_s * 1000)))
