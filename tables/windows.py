"""Tumbling event-time windows with grace, in the semantics of Kafka Streams.

Pure logic, no Kafka: :mod:`tables.metric_windows` persists it and
:mod:`agents.telemetry` drives it.

* Each input partition has its own **stream time**: the largest sample timestamp seen.
* A sample falls in window ``[start, start + size)`` with ``start = ts - ts % size``.
* A window **closes** once stream time reaches ``end + grace``: from then on it takes
  no sample, and :meth:`PartitionWindows.close_due` hands it out (once) for emission.
* A sample whose window has closed is **late**: it is not counted, it is reported (per
  window size, as Kafka Streams drops per aggregation) for the late-events topic.

Messages are applied in batches (:meth:`PartitionWindows.stage`, then
:meth:`PartitionWindows.apply_staged`) with exactly the result of applying them one by
one: each message's lateness is judged by the stream time before it, and its samples
join their windows in one vectorised pass over the whole batch (:mod:`tables.samples`):
the entries of every field, source and smallest window form one group, whose
statistics go into the window of each size that holds it.

Every function here is total over finite input: any finite values (subnormals and
±1e308 included), any timestamps, empty batches. Replays are not this module's
business: the state protocol (:mod:`kestrel.state`) never applies a message twice.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from tables.samples import (
    FloatArray,
    Group,
    Groups,
    IntArray,
    SampleBatch,
    group_batches,
    reduce_groups,
)
from tables.sketch import DDSketch

log = logging.getLogger(__name__)

__all__ = [
    "ClosedWindow",
    "LateSamples",
    "PartitionWindows",
    "SampleBatch",
    "WindowKey",
    "WindowSpec",
    "WindowState",
    "default_specs",
]


@dataclass(frozen=True)
class WindowSpec:
    """One window size: its name on the wire, its length and its grace period."""

    name: str
    size_ms: int
    grace_ms: int


def default_specs(grace_ms: int) -> tuple[WindowSpec, ...]:
    """The digest's windows: 1 s, 10 s and 5 min, with one grace period."""
    return (
        WindowSpec("1s", 1_000, grace_ms),
        WindowSpec("10s", 10_000, grace_ms),
        WindowSpec("5m", 300_000, grace_ms),
    )


class WindowState:
    """The running statistics of one field of one source in one window."""

    __slots__ = ("count", "last", "last_ts", "maximum", "minimum", "sketch", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.last = math.nan
        self.last_ts = -(2**63)
        self.sketch = DDSketch()

    def add(self, values: FloatArray, timestamps: IntArray) -> None:
        """Add one field's values (NaN: null) at their timestamps, in any order.

        The same computation as the stream's path (:func:`tables.samples.reduce_groups`,
        then :meth:`merge`), so there is one definition of every statistic.
        """
        if values.size == 0:
            return
        order = np.argsort(timestamps, kind="stable")
        self.merge(reduce_groups(values[order], timestamps[order], np.zeros(1, np.int64)), 0)

    def merge(self, groups: Groups, g: int) -> None:
        """Add group ``g`` of a batch's statistics (entries of this field in this window)."""
        if groups.counts[g]:
            self.merge_group(groups.group(g))

    def merge_group(self, group: Group) -> None:
        """Add one group's statistics (:meth:`tables.samples.Groups.group`)."""
        count, total, low, high, last, last_ts, positive, negative, zero = group
        self.count += count
        self.total += total
        if low < self.minimum:
            self.minimum = low
        if high > self.maximum:
            self.maximum = high
        if last_ts >= self.last_ts:
            self.last_ts = last_ts
            self.last = last
        self.sketch.merge_keys(positive, negative, zero)

    def quantile(self, q: float) -> float | None:
        """The sketch's quantile, never outside [min, max] (which the sketch may round past)."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: tuple[float, ...]) -> list[float | None]:
        if self.count == 0:
            return [None] * len(qs)
        return [
            None if value is None else min(max(value, self.minimum), self.maximum)
            for value in self.sketch.quantiles(qs)
        ]

    def stats(self) -> dict[str, Any]:
        """count, sum, mean, min, max, last and p50/p95/p99 (None while empty)."""
        empty = self.count == 0
        p50, p95, p99 = self.quantiles((0.50, 0.95, 0.99))
        return {
            "count": self.count,
            "sum": self.total,
            "mean": None if empty else _mean(self.total, self.count, self.minimum, self.maximum),
            "min": None if empty else self.minimum,
            "max": None if empty else self.maximum,
            "last": None if empty else self.last,
            "p50": p50,
            "p95": p95,
            "p99": p99,
        }

    def to_json(self) -> dict[str, Any]:
        """The changelog form; the sum is text when it overflowed (JSON has no inf)."""
        empty = self.count == 0
        return {
            "n": self.count,
            "s": self.total if math.isfinite(self.total) else repr(self.total),
            "lo": None if empty else self.minimum,
            "hi": None if empty else self.maximum,
            "l": None if empty else self.last,
            "lt": self.last_ts,
            "q": self.sketch.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WindowState:
        state = cls()
        state.count = int(data["n"])
        state.total = float(data["s"])
        if state.count:
            state.minimum, state.maximum = float(data["lo"]), float(data["hi"])
            state.last = float(data["l"])
        state.last_ts = int(data["lt"])
        state.sketch = DDSketch.from_json(data["q"])
        return state


def _mean(total: float, count: int, low: float, high: float) -> float:
    """The mean, within [min, max] even when the running sum overflowed or rounded out."""
    mean = total / count
    if not math.isfinite(mean):
        return low if high == low else math.nan
    return min(max(mean, low), high)


@dataclass(frozen=True)
class WindowKey:
    """Which window: source, field, size and start. ``|`` occurs in none of them."""

    source: str
    field: str
    window: str
    start_ms: int

    def aggregate_key(self) -> str:
        """The compaction key on ``metrics.aggregates``."""
        return f"{self.source}|{self.field}|{self.window}|{self.start_ms}"


@dataclass
class LateSamples:
    """Samples of one message that arrived after their window (of one size) closed."""

    source: str
    window: str
    window_start_ms: int
    stream_time_ms: int
    timestamps: list[int]
    fields: dict[str, list[float | None]]


@dataclass
class ClosedWindow:
    key: WindowKey
    state: WindowState
    size_ms: int


#: A source's open windows: (window size name, start) -> field -> state.
SourceWindows = dict[tuple[str, int], dict[str, WindowState]]


@dataclass
class PartitionWindows:
    """Every open window of one input partition, by source, and its stream time.

    Window sizes must nest (each a multiple of the next smaller, with a grace at least
    as long), as the digest's 1 s / 10 s / 5 min do: then a sample late for a window
    is late for every smaller one, and one group per smallest window serves them all.
    """

    partition: int
    specs: tuple[WindowSpec, ...]
    stream_time_ms: int = -(2**63)
    sources: dict[str, SourceWindows] = field(default_factory=dict)
    #: Sources whose windows changed since :meth:`take_dirty` last ran.
    dirty: set[str] = field(default_factory=set)
    late_counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    #: Messages staged for the next :meth:`apply_staged`, and what they will open.
    _staged: list[SampleBatch] = field(default_factory=list)
    _staged_time_ms: int = -(2**63)
    _reserved: dict[str, set[str]] = field(default_factory=dict)
    _reserved_new: int = 0  # reserved sources that have no window yet
    #: (source, field) -> the smallest window's start and the states of every size that
    #: hold it: most groups of a batch go where the last one of their field went.
    _current: dict[tuple[str, str], tuple[int, list[WindowState]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_size = tuple(sorted(self.specs, key=lambda spec: spec.size_ms))
        self._sizes = [(spec.size_ms, spec.grace_ms) for spec in self._by_size]
        for small, large in pairwise(self._by_size):
            if large.size_ms % small.size_ms or large.grace_ms < small.grace_ms:
                raise ValueError(
                    f"window {large.name} does not nest {small.name}: its size must be a "
                    "multiple and its grace at least as long"
                )

    def over_capacity(self, batch: SampleBatch, max_sources: int, max_fields: int) -> str | None:
        """Why ``batch`` would take state past its bounds (a reason), or None if it fits.

        Sources and field names are the producer's choice, so the state they create
        is capped: ``max_sources`` sources with open windows, ``max_fields`` fields per
        source (every field of a source is in its longest open windows). Messages
        staged but not yet applied count as applied.
        """
        windows = self.sources.get(batch.source)
        reserved = self._reserved.get(batch.source)
        known: set[str] = set() if reserved is None else set(reserved)
        if windows is None:
            if reserved is None and len(self.sources) + self._reserved_new >= max_sources:
                opened = len(self.sources) + self._reserved_new
                return f"too_many_sources: {opened} have open windows here"
        else:
            longest = self._by_size[-1].name
            known = known.union(*(s for (w, _), s in windows.items() if w == longest))
        if len(known.union(batch.names)) > max_fields:
            return f"too_many_fields: {batch.source} would have more than {max_fields}"
        return None

    def apply(self, batch: SampleBatch) -> list[LateSamples]:
        """Add one message's samples to their windows; return those that came late."""
        self.stage(batch)
        applied = self.apply_staged()[0]
        if isinstance(applied, Exception):
            raise applied
        return applied

    def stage(self, batch: SampleBatch) -> None:
        """Queue a message for the next :meth:`apply_staged`, after those queued before."""
        if not self._staged:
            self._staged_time_ms = self.stream_time_ms
        # Envelopes are validated in order; anything else is sorted here, since each
        # window's rows must be in time order.
        batch = batch.in_time_order()
        ts = batch.timestamps
        if ts.size:
            newest = int(ts[-1])
            # Does it open state? Only if its newest row is on time for the longest
            # window (every smaller one closes before it).
            longest = self._by_size[-1]
            end = newest - newest % longest.size_ms + longest.size_ms
            if batch.names and end + longest.grace_ms > self._staged_time_ms:
                reserved = self._reserved.get(batch.source)
                if reserved is None:
                    reserved = self._reserved[batch.source] = set()
                    self._reserved_new += batch.source not in self.sources
                reserved.update(batch.names)
            self._staged_time_ms = max(self._staged_time_ms, newest)
        self._staged.append(batch)

    def apply_staged(self) -> list[list[LateSamples] | Exception]:
        """Apply the staged messages, in order; each one's late samples, in that order.

        The result is that of applying each on its own, in turn: a message's lateness
        is judged by the stream time before it. If the batch's arithmetic fails (a bug,
        or memory), nothing has changed yet: each message is applied alone, and one that
        fails again is reported by its exception in place of its late samples.
        """
        staged = self._staged
        self._staged, self._reserved, self._reserved_new = [], {}, 0
        finest = self._by_size[0]
        befores: list[int] = []
        lates: list[list[LateSamples] | Exception] = []
        stream_time = self.stream_time_ms
        some_late = False
        for batch in staged:
            befores.append(stream_time)
            ts = batch.timestamps
            if ts.size == 0:
                lates.append([])
                continue
            oldest = int(ts[0])
            if oldest - oldest % finest.size_ms + finest.size_ms + finest.grace_ms <= stream_time:
                lates.append(self._lates(batch, stream_time))
                some_late = True
            else:
                lates.append([])
            stream_time = max(stream_time, int(ts[-1]))
        try:
            grouped = group_batches(staged, befores, self._sizes, some_late)
        except Exception:
            log.exception(
                "windows[%d]: a batch failed; applying its messages one by one", self.partition
            )
            for i, (batch, before) in enumerate(zip(staged, befores, strict=True)):
                try:
                    grouped = group_batches([batch], [before], self._sizes, bool(lates[i]))
                except Exception as exc:
                    lates[i] = exc
                else:
                    self._merge(*grouped)
        else:
            self._merge(*grouped)
        self.stream_time_ms = stream_time
        return lates

    def _merge(
        self, groups: Groups, codes: list[int], starts: list[int], pairs: list[tuple[str, str]]
    ) -> None:
        """Merge each group into the window of each size it is on time for."""
        specs = [(spec.name, spec.size_ms) for spec in self._by_size]
        dirty = self.dirty
        current = self._current
        for g, (c, start) in enumerate(zip(codes, starts, strict=True)):
            pair, level = divmod(c, len(specs))
            key = pairs[pair]
            cached = current.get(key) if level == 0 else None
            if cached is not None and cached[0] == start:
                states = cached[1]
            else:
                states = self._states(key, start, specs[level:])
                if level == 0:
                    current[key] = (start, states)
            if groups.counts[g]:
                group = groups.group(g)
                for state in states:
                    state.merge_group(group)
            dirty.add(key[0])

    def _states(
        self, key: tuple[str, str], start: int, specs: list[tuple[str, int]]
    ) -> list[WindowState]:
        """The states of ``key``'s windows of ``specs`` that hold ``start``; made if new."""
        source, name = key
        windows = self.sources.get(source)
        if windows is None:
            windows = self.sources[source] = {}
        found = []
        for window, size in specs:
            slot = (window, start - start % size)
            states = windows.get(slot)
            if states is None:
                states = windows[slot] = {}
            state = states.get(name)
            if state is None:
                state = states[name] = WindowState()
            found.append(state)
        return found

    def _lates(self, batch: SampleBatch, stream_time: int) -> list[LateSamples]:
        """The message's samples late for each size, by window (``stream_time``: before it)."""
        ts = batch.timestamps
        late: list[LateSamples] = []
        for spec in self.specs:
            starts = ts - ts % spec.size_ms
            cuts = np.flatnonzero(np.diff(starts)) + 1
            for lo, hi in pairwise([0, *cuts.tolist(), len(ts)]):
                start = int(starts[lo])
                if start + spec.size_ms + spec.grace_ms <= stream_time:
                    late.append(self._late(batch, spec, start, slice(lo, hi), stream_time))
        return late

    def _late(
        self, batch: SampleBatch, spec: WindowSpec, start: int, rows: slice, stream_time: int
    ) -> LateSamples:
        fields = {
            name: [None if math.isnan(v) else v for v in column[rows].tolist()]
            for name, column in batch.fields.items()
        }
        count = sum(sum(1 for v in values if v is not None) for values in fields.values())
        self.late_counts[(batch.source, spec.name)] += count
        return LateSamples(
            batch.source, spec.name, start, stream_time, batch.timestamps[rows].tolist(), fields
        )

    def close_due(self) -> list[ClosedWindow]:
        """Take out the windows stream time has closed (end + grace), for emission."""
        closed: list[ClosedWindow] = []
        sizes = {spec.name: spec for spec in self.specs}
        for source, windows in list(self.sources.items()):
            for window, start in list(windows):
                spec = sizes[window]
                if start + spec.size_ms + spec.grace_ms > self.stream_time_ms:
                    continue
                self._current.clear()  # it may hold the states closed here
                for name, state in windows.pop((window, start)).items():
                    closed.append(
                        ClosedWindow(WindowKey(source, name, window, start), state, spec.size_ms)
                    )
                self.dirty.add(source)
            if not windows:
                del self.sources[source]
        return closed

    def take_dirty(self) -> set[str]:
        """The sources changed since the last call (their state must be written)."""
        dirty, self.dirty = self.dirty, set()
        return dirty

    def window(self, key: WindowKey) -> WindowState | None:
        return self.sources.get(key.source, {}).get((key.window, key.start_ms), {}).get(key.field)

    def open_windows(self, source: str | None = None) -> dict[WindowKey, WindowState]:
        """Running (not yet closed) windows, for reading their value while open."""
        picked = (
            self.sources.items() if source is None else [(source, self.sources.get(source, {}))]
        )
        return {
            WindowKey(name, field_name, window, start): state
            for name, windows in picked
            for (window, start), states in windows.items()
            for field_name, state in states.items()
        }

    def source_json(self, source: str) -> dict[str, Any] | None:
        """One source's open windows in changelog form; None once it has none."""
        windows = self.sources.get(source)
        if not windows:
            return None
        return {
            f"{window}|{start}": {name: state.to_json() for name, state in states.items()}
            for (window, start), states in windows.items()
        }

    def restore_source(self, source: str, data: dict[str, Any]) -> None:
        """Put back a source's open windows read from the changelog."""
        self._current.clear()
        windows: SourceWindows = {}
        for slot, states in data.items():
            window, start = slot.split("|")
            windows[(window, int(start))] = {
                name: WindowState.from_json(value) for name, value in states.items()
            }
        self.sources[source] = windows
