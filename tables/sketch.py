"""A mergeable quantile sketch: DDSketch with a relative-accuracy guarantee.

Values are counted in logarithmic buckets ``gamma ** (k - 1) < |v| <= gamma ** k`` with
``gamma = (1 + alpha) / (1 - alpha)``; a quantile is read back as the bucket's
midpoint ``2 * gamma ** k / (gamma + 1)``. For ``alpha = 0.01`` every quantile it
returns is within 1 % (relative) of the exact sample quantile of the values added
(Masson, Rim & Lee, "DDSketch", VLDB 2019), for any distribution. Two sketches merge
by adding bucket counts, so 1 s windows combine into longer ones without error growth.

Values with ``|v| < MIN_INDEXABLE`` count as zero. Buckets live in a dict per sign,
so memory follows the spread of the data (about 115 buckets per decade of range).

The bucket count is bounded as in DDSketch's own bounded variant (its
``CollapsingLowestDenseStore``): a sign keeps at most ``MAX_BUCKETS`` buckets, and
beyond that its lowest-magnitude buckets collapse into the lowest one kept. 2048
buckets span a factor of ``GAMMA ** 2048`` (about 6e17, nearly 18 decades) below the
largest magnitude: a quantile whose value lies in that span keeps the 1 % guarantee;
one below it (only data spread over more than 18 decades has such values) is reported
as the lowest kept bucket, too large in magnitude, and still clamped to [min, max] by
the window. Without the bound a hostile source could make one sketch hold ~36,000
buckets a sign (values from 1e-9 to 1e300).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import accumulate, chain
from typing import Any

import numpy as np
import numpy.typing as npt

ALPHA = 0.01
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LOG_GAMMA = math.log(GAMMA)
MIN_INDEXABLE = 1e-9
MAX_BUCKETS = 2048
PENDING_KEYS = 8192  # keys a sketch holds uncounted at most (see DDSketch)


def _bucket_counts(magnitudes: npt.NDArray[np.float64]) -> dict[int, int]:
    keys = np.ceil(np.log(magnitudes) / LOG_GAMMA).astype(np.int64)
    unique, counts = np.unique(keys, return_counts=True)
    return dict(zip(unique.tolist(), counts.tolist(), strict=True))


def _add_into(target: Counter[int], source: dict[int, int]) -> None:
    target.update(source)
    if len(target) > MAX_BUCKETS:
        _collapse_lowest(target)


def _add_keys(target: Counter[int], keys: Iterable[int]) -> None:
    target.update(keys)  # one count per key, counted in C
    if len(target) > MAX_BUCKETS:
        _collapse_lowest(target)


def _collapse_lowest(store: dict[int, int]) -> None:
    """Fold the lowest-magnitude buckets into the lowest of the ``MAX_BUCKETS`` kept."""
    keys = sorted(store)
    lowest_kept = keys[-MAX_BUCKETS]
    store[lowest_kept] += sum(store.pop(key) for key in keys[:-MAX_BUCKETS])


class DDSketch:
    """Counts of values in relative-width buckets; see the module docstring.

    Keys added by :meth:`merge_keys` wait in a list and are counted, all at once and in
    C, when the buckets are next read (or once ``PENDING_KEYS`` wait): a window's
    sketch takes a batch's keys many times a second, and is read once a commit.
    """

    __slots__ = ("_negative", "_pending", "_pending_keys", "_positive", "count", "zero")

    def __init__(self) -> None:
        self._positive: Counter[int] = Counter()
        self._negative: Counter[int] = Counter()
        self._pending: list[tuple[list[int], list[int]]] = []
        self._pending_keys = 0
        self.zero = 0
        self.count = 0

    @property
    def positive(self) -> Counter[int]:
        """Bucket key to count of the positive values."""
        if self._pending:
            self._settle()
        return self._positive

    @property
    def negative(self) -> Counter[int]:
        """Bucket key to count of the negative values (keys of their magnitudes)."""
        if self._pending:
            self._settle()
        return self._negative

    def _settle(self) -> None:
        pending, self._pending, self._pending_keys = self._pending, [], 0
        # Chained in C: a window's keys wait in several lists, one per batch's group.
        _add_keys(self._positive, chain.from_iterable([positive for positive, _ in pending]))
        negatives = [negative for _, negative in pending if negative]
        if negatives:
            _add_keys(self._negative, chain.from_iterable(negatives))

    def __eq__(self, other: object) -> bool:
        """The same counts in the same buckets (however they were added)."""
        if not isinstance(other, DDSketch):
            return NotImplemented
        return (self.positive, self.negative, self.zero, self.count) == (
            other.positive,
            other.negative,
            other.zero,
            other.count,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def add_many(self, values: npt.NDArray[np.float64]) -> None:
        """Add finite values (NaNs must be removed by the caller)."""
        if values.size == 0:
            return
        self.count += int(values.size)
        magnitudes = np.abs(values)
        indexable = magnitudes >= MIN_INDEXABLE
        self.zero += int(values.size - np.count_nonzero(indexable))
        positive = values[indexable & (values > 0)]
        negative = -values[indexable & (values < 0)]
        if positive.size:
            _add_into(self.positive, _bucket_counts(positive))
        if negative.size:
            _add_into(self.negative, _bucket_counts(negative))

    def merge_keys(self, positive: list[int], negative: list[int], zero: int) -> None:
        """Add values by their bucket keys, one key per value (see tables.samples)."""
        added = len(positive) + len(negative)
        if added:
            self._pending.append((positive, negative))
            self._pending_keys += added
            if self._pending_keys > PENDING_KEYS:
                self._settle()
        self.zero += zero
        self.count += added + zero

    def merge(self, other: DDSketch) -> None:
        _add_into(self.positive, other.positive)
        _add_into(self.negative, other.negative)
        self.zero += other.zero
        self.count += other.count

    def quantile(self, q: float) -> float | None:
        """The value at rank ``q`` (0..1), within ALPHA relative error; None if empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """:meth:`quantile` of each of ``qs``, from one ordered pass over the buckets.

        The value at rank ``q * (count - 1)`` is that of the first bucket, in ascending
        order of value (most negative first, then zero, then positive), whose running
        count exceeds the rank.
        """
        if self.count == 0:
            return [None] * len(qs)
        negative, positive = self.negative, self.positive
        low = sorted(negative, reverse=True)  # largest magnitude: lowest value
        high = sorted(positive)
        counts = list(map(negative.__getitem__, low))
        counts.append(self.zero)
        counts.extend(map(positive.__getitem__, high))
        running = list(accumulate(counts))
        n_low, last_rank = len(low), self.count - 1
        found: list[float | None] = []
        for q in qs:
            i = bisect_right(running, q * last_rank)
            if i < n_low:
                found.append(-_value(low[i]))
            elif i == n_low:
                found.append(0.0)
            elif i - n_low - 1 < len(high):
                found.append(_value(high[i - n_low - 1]))
            else:  # past every count (rounding of the rank): the top bucket
                found.append(_value(high[-1]) if high else 0.0)
        return found

    def to_json(self) -> dict[str, Any]:
        """Form for the changelog: per sign, the bucket keys and their counts as two
        lists, and the zero count.

        Flat lists of ints encode in about half the time of a dict with int keys, and
        take a quarter less room (the windows stage writes every open window's sketch
        at each commit). :meth:`from_json` also reads the earlier form, ``{"p": {key:
        count}, "n": {...}}``, so a changelog written before still restores.
        """
        positive, negative = self.positive, self.negative
        return {
            "pk": list(positive),
            "pc": list(positive.values()),
            "nk": list(negative),
            "nc": list(negative.values()),
            "z": self.zero,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DDSketch:
        sketch = cls()
        if "pk" in data:
            sketch._positive = _counter(data["pk"], data["pc"])
            sketch._negative = _counter(data["nk"], data["nc"])
        else:  # the earlier form: key to count, keys as ints or as strings
            sketch._positive = Counter({int(k): int(c) for k, c in _pairs(data["p"])})
            sketch._negative = Counter({int(k): int(c) for k, c in _pairs(data["n"])})
        for store in (sketch.positive, sketch.negative):  # a changelog from before the bound
            if len(store) > MAX_BUCKETS:
                _collapse_lowest(store)
        sketch.zero = int(data["z"])
        sketch.count = sketch.zero + sum(sketch.positive.values()) + sum(sketch.negative.values())
        return sketch


def _counter(keys: list[int], counts: list[int]) -> Counter[int]:
    if len(keys) != len(counts):
        raise ValueError(f"{len(keys)} bucket keys for {len(counts)} counts")
    return Counter(dict(zip(map(int, keys), map(int, counts), strict=True)))


def bucket_keys(values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Each value's bucket: ``k`` for positive ``v``, ``-k`` for negative, 0 for zero.

    Bucket keys of indexable magnitudes are never 0 below ``MIN_INDEXABLE``'s
    bucket, so 0 is free to mean "zero" here; NaNs map to 0 too and must be masked.
    """
    magnitudes = np.abs(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        keys = np.ceil(np.log(magnitudes) / LOG_GAMMA)
    keys = np.where(magnitudes >= MIN_INDEXABLE, keys, 0.0)
    keys = np.nan_to_num(keys, nan=0.0)
    return (np.sign(values).astype(np.int64) * (keys.astype(np.int64) + KEY_SHIFT)) * (
        magnitudes >= MIN_INDEXABLE
    )


#: Added to every bucket key so that none is 0: ``log(MIN_INDEXABLE) / LOG_GAMMA`` is
#: about -1036, and keys of larger magnitudes are greater.
KEY_SHIFT = 2048


def _pairs(buckets: dict[Any, int] | list[tuple[int, int]]) -> Any:
    return buckets.items() if isinstance(buckets, dict) else buckets


_LOG_MIDPOINT = math.log(2.0 / (GAMMA + 1.0))


def _value(key: int) -> float:
    """The bucket's midpoint ``2 * gamma ** k / (gamma + 1)``, inf past the float range.

    In logs: ``GAMMA ** k`` raises OverflowError for the top buckets (values near
    1.8e308) before the division would bring it back in range.
    """
    exponent = key * LOG_GAMMA + _LOG_MIDPOINT
    return math.exp(exponent) if exponent < 709.78 else math.inf
