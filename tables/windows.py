"""Tumbling event-time windows with grace, in the semantics of Kafka Streams.

Pure logic, no Kafka: :mod:`tables.metric_windows` persists it and
:mod:`agents.telemetry` drives it.

* Each input partition has its own **stream time**: the largest sample timestamp seen.
* A sample falls in window ``[start, start + size)`` with ``start = ts - ts % size``.
* A window **closes** once stream time reaches ``end + grace``: from then on it takes
  no sample, and :meth:`PartitionWindows.close_due` hands it out (once) for emission.
* A sample whose window has closed is **late**: it is not counted, it is reported (per
  window size, as Kafka Streams drops per aggregation) for the late-events topic.

Every function here is total over finite input: any finite values (subnormals and
±1e308 included), any timestamps, empty batches. Replays are not this module's
business: the state protocol (:mod:`kestrel.state`) never applies a message twice.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

from kestrel.schemas import MetricEnvelope
from tables.sketch import DDSketch, bucket_keys, split_keys

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


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


@dataclass
class SampleBatch:
    """The samples of one message: one source, rows of timestamps, columns of fields.

    ``fields`` maps a field name to a float array as long as ``timestamps``; NaN marks
    a sample in which that field was null (unknown, not counted).
    """

    source: str
    timestamps: IntArray
    fields: dict[str, FloatArray]

    @classmethod
    def from_envelope(cls, envelope: MetricEnvelope) -> SampleBatch:
        """Columns of the envelope's samples, or its single ``data`` sample."""
        if envelope.samples is None:
            timestamps = [envelope.timestamp]
            columns = {name: [value] for name, value in envelope.data.items()}
        else:
            timestamps = envelope.samples.timestamp
            columns = envelope.samples.data
        return cls(
            envelope.source,
            np.asarray(timestamps, dtype=np.int64),
            # None becomes NaN in a float64 array.
            {name: np.asarray(column, dtype=np.float64) for name, column in columns.items()},
        )

    @property
    def values(self) -> int:
        """How many non-null values (samples of one field) the batch carries."""
        return sum(int(np.count_nonzero(~np.isnan(v))) for v in self.fields.values())


@dataclass
class RowStats:
    """count, sum, min, max, last and sketch buckets of each field over some rows.

    Computed once per message (numpy over all fields at once) and merged into each
    window size the rows fall in: a message's rows usually share their 1 s, 10 s and
    5 min windows, so the work is not repeated three times.
    """

    counts: list[int]
    sums: list[float]
    mins: list[float]
    maxs: list[float]
    lasts: list[float]
    last_ts: list[int]
    buckets: list[tuple[dict[int, int], dict[int, int], int]]

    @classmethod
    def of(cls, values: FloatArray, timestamps: IntArray) -> RowStats:
        """Statistics of ``values`` (fields x rows, NaN = null) at ``timestamps``."""
        known = ~np.isnan(values)
        rows = values.shape[1]
        with np.errstate(invalid="ignore", over="ignore"):
            mins = np.fmin.reduce(values, axis=1)
            maxs = np.fmax.reduce(values, axis=1)
            # Sums of huge values overflow to ±inf (or inf - inf = nan): IEEE, not an
            # error. Validation keeps real inputs far from it (kestrel.schemas).
            sums = np.where(known, values, 0.0).sum(axis=1)
        # Rows are in timestamp order: the last known value of a field is its latest.
        last_index = rows - 1 - np.argmax(known[:, ::-1], axis=1)
        fields = np.arange(values.shape[0])
        keys = bucket_keys(np.where(known, values, 0.0)).tolist()
        known_rows = known.tolist()
        return cls(
            counts=known.sum(axis=1).tolist(),
            sums=sums.tolist(),
            mins=mins.tolist(),
            maxs=maxs.tolist(),
            lasts=values[fields, last_index].tolist(),
            last_ts=timestamps[last_index].tolist(),
            buckets=[
                split_keys([k for k, ok in zip(field_keys, ok_row, strict=True) if ok])
                for field_keys, ok_row in zip(keys, known_rows, strict=True)
            ],
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

        The same computation as the stream's path (:class:`RowStats`, then
        :meth:`merge`), so there is one definition of every statistic.
        """
        if values.size == 0:
            return
        order = np.argsort(timestamps, kind="stable")
        self.merge(RowStats.of(values[order][np.newaxis, :], timestamps[order]), 0)

    def merge(self, stats: RowStats, i: int) -> None:
        """Add field ``i`` of a message's precomputed statistics (one window's rows)."""
        count = stats.counts[i]
        if count == 0:
            return
        self.count += count
        self.total += stats.sums[i]
        self.minimum = min(self.minimum, stats.mins[i])
        self.maximum = max(self.maximum, stats.maxs[i])
        if stats.last_ts[i] >= self.last_ts:
            self.last_ts = stats.last_ts[i]
            self.last = stats.lasts[i]
        positive, negative, zero = stats.buckets[i]
        self.sketch.merge_counts(positive, negative, zero, count)

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
    """Every open window of one input partition, by source, and its stream time."""

    partition: int
    specs: tuple[WindowSpec, ...]
    stream_time_ms: int = -(2**63)
    sources: dict[str, SourceWindows] = field(default_factory=dict)
    #: Sources whose windows changed since :meth:`take_dirty` last ran.
    dirty: set[str] = field(default_factory=set)
    late_counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    def over_capacity(self, batch: SampleBatch, max_sources: int, max_fields: int) -> str | None:
        """Why ``batch`` would take state past its bounds (a reason), or None if it fits.

        Sources and field names are the producer's choice, so the state they create
        is capped: ``max_sources`` sources with open windows, ``max_fields`` fields per
        source (every field of a source is in its longest open windows).
        """
        windows = self.sources.get(batch.source)
        if windows is None:
            if len(self.sources) >= max_sources:
                return f"too_many_sources: {len(self.sources)} have open windows here"
            known: set[str] = set()
        else:
            longest = max(self.specs, key=lambda spec: spec.size_ms).name
            known = set().union(*(s for (w, _), s in windows.items() if w == longest))
        if len(known.union(batch.fields)) > max_fields:
            return f"too_many_fields: {batch.source} would have more than {max_fields}"
        return None

    def apply(self, batch: SampleBatch) -> list[LateSamples]:
        """Add one message's samples to their windows; return those that came late."""
        ts = batch.timestamps
        if ts.size == 0:
            return []
        late: list[LateSamples] = []
        stream_time = self.stream_time_ms  # lateness is judged before this message
        names = list(batch.fields)
        values = (
            np.vstack([batch.fields[name] for name in names])
            if names
            else np.empty((0, ts.size), dtype=np.float64)
        )
        if ts.size > 1 and bool((np.diff(ts) < 0).any()):
            # Envelopes are validated in order; anything else is sorted here, since
            # each window's rows must form one slice.
            order = np.argsort(ts, kind="stable")
            ts, values = ts[order], values[:, order]
            batch = SampleBatch(batch.source, ts, {n: values[i] for i, n in enumerate(names)})
        computed: dict[tuple[int, int], RowStats] = {}
        for spec in self.specs:
            starts = ts - ts % spec.size_ms
            # Rows are in timestamp order, so each window's rows are one slice.
            cuts = np.flatnonzero(np.diff(starts)) + 1
            bounds = [0, *cuts.tolist(), len(ts)]
            for lo, hi in pairwise(bounds):
                start = int(starts[lo])
                if start + spec.size_ms + spec.grace_ms <= stream_time:
                    late.append(self._late(batch, spec, start, slice(lo, hi), stream_time))
                    continue
                if not names:
                    continue
                stats = computed.get((lo, hi))
                if stats is None:
                    stats = computed[(lo, hi)] = RowStats.of(values[:, lo:hi], ts[lo:hi])
                states = self.sources.setdefault(batch.source, {}).setdefault(
                    (spec.name, start), {}
                )
                for i, name in enumerate(names):
                    state = states.get(name)
                    if state is None:
                        state = states[name] = WindowState()
                    state.merge(stats, i)
                self.dirty.add(batch.source)
        self.stream_time_ms = max(stream_time, int(ts[-1]))
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
        windows: SourceWindows = {}
        for slot, states in data.items():
            window, start = slot.split("|")
            windows[(window, int(start))] = {
                name: WindowState.from_json(value) for name, value in states.items()
            }
        self.sources[source] = windows
