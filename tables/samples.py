"""Samples as messages carry them, and their statistics per group of entries.

Pure NumPy, no Kafka, no window semantics: :mod:`tables.windows` decides which entries
form a group (one field of one source in one window) and where each group's
statistics go. Everything here is computed for a whole batch of messages at once, so
the cost per message is a few array operations shared with hundreds of others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kestrel.schemas import MetricEnvelope
from tables.sketch import LOG_GAMMA, MIN_INDEXABLE

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class SampleBatch:
    """The samples of one message: one source, rows of timestamps, columns of fields.

    ``matrix[i]`` holds field ``names[i]``'s value in each row (NaN: the sample was
    null, unknown, not counted); :attr:`fields` gives the same as a dict of views.
    """

    __slots__ = ("matrix", "names", "source", "timestamps")

    def __init__(self, source: str, timestamps: IntArray, fields: Mapping[str, FloatArray]):
        self.source = source
        self.timestamps = np.asarray(timestamps, dtype=np.int64)
        self.names = tuple(fields)
        self.matrix: FloatArray = (
            np.vstack([np.asarray(fields[name], dtype=np.float64) for name in self.names])
            if self.names
            else np.empty((0, self.timestamps.size), dtype=np.float64)
        )

    @classmethod
    def of_matrix(
        cls, source: str, timestamps: IntArray, names: tuple[str, ...], matrix: FloatArray
    ) -> SampleBatch:
        batch = cls.__new__(cls)
        batch.source, batch.timestamps, batch.names, batch.matrix = (
            source,
            timestamps,
            names,
            matrix,
        )
        return batch

    @classmethod
    def from_envelope(cls, envelope: MetricEnvelope) -> SampleBatch:
        """Columns of the envelope's samples, or its single ``data`` sample."""
        if envelope.samples is None:
            timestamps = [envelope.timestamp]
            names = tuple(envelope.data)
            columns = [[value] for value in envelope.data.values()]
        else:
            timestamps = envelope.samples.timestamp
            names = tuple(envelope.samples.data)
            columns = list(envelope.samples.data.values())
        rows = len(timestamps)
        # One conversion for every column; None becomes NaN in a float64 array.
        matrix = (
            np.array(columns, dtype=np.float64) if names else np.empty((0, rows), dtype=np.float64)
        )
        return cls.of_matrix(envelope.source, np.asarray(timestamps, dtype=np.int64), names, matrix)

    def __repr__(self) -> str:
        fields = {name: column.tolist() for name, column in self.fields.items()}
        return f"SampleBatch({self.source!r}, {self.timestamps.tolist()}, {fields})"

    @property
    def fields(self) -> dict[str, FloatArray]:
        return dict(zip(self.names, self.matrix, strict=True))

    @property
    def values(self) -> int:
        """How many non-null values (samples of one field) the batch carries."""
        return int(np.count_nonzero(~np.isnan(self.matrix)))

    def in_time_order(self) -> SampleBatch:
        """The same samples with rows in timestamp order (stable: ties keep their order)."""
        ts = self.timestamps
        if ts.size < 2 or not bool((np.diff(ts) < 0).any()):
            return self
        order = np.argsort(ts, kind="stable")
        return SampleBatch.of_matrix(self.source, ts[order], self.names, self.matrix[:, order])


Group = tuple[int, float, float, float, float, int, list[int], list[int], int]


@dataclass
class Groups:
    """count, sum, min, max, last and sketch buckets of contiguous groups of entries.

    Group ``g`` is entries ``starts[g]`` to ``starts[g + 1]`` (exclusive) of arrays in
    which each group's entries stand in time order, ties in arrival order, so that a
    group's last known entry is its latest value. NaN entries are nulls: they make a
    group exist but count for nothing.
    """

    counts: list[int]
    sums: list[float]
    mins: list[float]
    maxs: list[float]
    lasts: list[float]
    last_ts: list[int]
    #: Bucket keys of the positive and of the negative values, flat; group ``g``'s are
    #: ``positive[positive_at[g]:positive_at[g + 1]]`` (one key per value, repeated).
    positive: list[int]
    positive_at: list[int]
    negative: list[int]
    negative_at: list[int]

    def __len__(self) -> int:
        return len(self.counts)

    def group(self, g: int) -> Group:
        """Group ``g``: count, sum, min, max, last, its timestamp, positive keys,
        negative keys and the count of zeros."""
        positive = self.positive[self.positive_at[g] : self.positive_at[g + 1]]
        negative = self.negative[self.negative_at[g] : self.negative_at[g + 1]]
        count = self.counts[g]
        return (
            count,
            self.sums[g],
            self.mins[g],
            self.maxs[g],
            self.lasts[g],
            self.last_ts[g],
            positive,
            negative,
            count - len(positive) - len(negative),
        )


def reduce_groups(values: FloatArray, timestamps: IntArray, starts: IntArray) -> Groups:
    """The statistics of each group; ``starts`` ascending, the first 0 (see :class:`Groups`).

    Total over finite input: sums of huge values overflow to ±inf (or inf - inf = nan),
    IEEE, not an error; validation keeps real inputs far from it (kestrel.schemas).
    """
    n = values.size
    known = ~np.isnan(values)
    with np.errstate(invalid="ignore", over="ignore"):
        counts = np.add.reduceat(known, starts, dtype=np.int64)
        sums = np.add.reduceat(np.where(known, values, 0.0), starts)
        mins = np.fmin.reduceat(values, starts)
        maxs = np.fmax.reduceat(values, starts)
    # The last known entry of each group (-1 if it has none: its count is 0).
    last = np.maximum.reduceat(np.where(known, np.arange(n), -1), starts)
    last = np.where(last >= 0, last, 0)
    magnitudes = np.abs(np.where(known, values, 0.0))
    indexable = magnitudes >= MIN_INDEXABLE
    with np.errstate(divide="ignore"):
        keys = np.ceil(np.log(np.where(indexable, magnitudes, 1.0)) / LOG_GAMMA).astype(np.int64)
    group_of = np.repeat(np.arange(starts.size), np.diff(np.append(starts, n)))
    bounds = np.arange(starts.size + 1)
    positive = indexable & (values > 0)
    negative = indexable & (values < 0)
    return Groups(
        counts=counts.tolist(),
        sums=sums.tolist(),
        mins=mins.tolist(),
        maxs=maxs.tolist(),
        lasts=values[last].tolist(),
        last_ts=timestamps[last].tolist(),
        positive=keys[positive].tolist(),
        positive_at=np.searchsorted(group_of[positive], bounds).tolist(),
        negative=keys[negative].tolist(),
        negative_at=np.searchsorted(group_of[negative], bounds).tolist(),
    )


#: A batch's groups: their statistics, codes (pair x lateness), smallest-window starts,
#: and the (source, field) pairs the codes number.
Grouped = tuple[Groups, list[int], list[int], list[tuple[str, str]]]
NOTHING: Grouped = (Groups([], [], [], [], [], [], [], [0], [], [0]), [], [], [])


def group_batches(
    staged: list[SampleBatch], befores: list[int], sizes: list[tuple[int, int]], some_late: bool
) -> Grouped:
    """The statistics of every on-time sample of ``staged``, grouped by (source, field,
    lateness, smallest window): what :class:`tables.windows.PartitionWindows` merges.

    ``befores``: the stream time before each message; ``sizes``: each window size's
    length and grace, smallest first (they nest); ``some_late``: whether any message
    has late rows (if none, no entry's lateness needs computing). Returns the groups,
    each group's code (pair x number of sizes + lateness), its smallest window's
    start, and the (source, field) pairs the codes number.
    """
    pairs: dict[tuple[str, str], int] = {}  # (source, field) -> its id in this batch
    piece_pair: list[int] = []  # per (message, field) piece
    piece_rows: list[int] = []
    piece_ts_at: list[int] = []  # where its message's rows start in ``timestamps``
    piece_before: list[int] = []
    matrices: list[FloatArray] = []
    timestamps: list[IntArray] = []
    rows_so_far = 0
    for batch, before in zip(staged, befores, strict=True):
        rows = batch.timestamps.size
        if not rows or not batch.names:
            continue
        for name in batch.names:
            piece_pair.append(pairs.setdefault((batch.source, name), len(pairs)))
        n = len(batch.names)
        piece_rows += [rows] * n
        piece_ts_at += [rows_so_far] * n
        piece_before += [before] * n
        matrices.append(batch.matrix.ravel())
        timestamps.append(batch.timestamps)
        rows_so_far += rows
    if not matrices:
        return NOTHING
    values = np.concatenate(matrices)
    lengths = np.asarray(piece_rows)
    first = np.cumsum(lengths) - lengths  # each piece's first entry
    ts = np.concatenate(timestamps)[
        np.arange(values.size) - np.repeat(first - np.asarray(piece_ts_at), lengths)
    ]
    pair = np.repeat(np.asarray(piece_pair, dtype=np.int64), lengths)
    # How many of the sizes (smallest first) each entry is late for; late for all:
    # not counted anywhere (the message's late records say so).
    level = np.zeros(values.size, dtype=np.int64)
    if some_late:
        stream_time = np.repeat(np.asarray(piece_before, dtype=np.int64), lengths)
        for size, grace in sizes:
            level += ts - ts % size + (size + grace) <= stream_time
        on_time = level < len(sizes)
        if not on_time.all():
            values, ts = values[on_time], ts[on_time]
            pair, level = pair[on_time], level[on_time]
            if not values.size:
                return NOTHING
    code = pair * len(sizes) + level
    codes = len(pairs) * len(sizes)
    finest = sizes[0][0]
    # Stable: within a code, entries stay in arrival order (a radix sort when the
    # codes fit 16 bits); that is time order unless a source's messages came out
    # of order, and then a sort by time within each code puts it right.
    order = np.argsort(code.astype(np.uint16 if codes <= 2**16 else np.int64), kind="stable")
    code_s, ts_s = code[order], ts[order]
    same = code_s[1:] == code_s[:-1]
    if bool((same & (ts_s[1:] < ts_s[:-1])).any()):
        order = np.lexsort((ts, code))
        code_s, ts_s = code[order], ts[order]
        same = code_s[1:] == code_s[:-1]
    window = ts_s - ts_s % finest
    starts = np.flatnonzero(np.concatenate(([True], ~same | (window[1:] != window[:-1]))))
    groups = reduce_groups(values[order], ts_s, starts)
    return groups, code_s[starts].tolist(), window[starts].tolist(), list(pairs)
