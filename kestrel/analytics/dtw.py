"""Dynamic time warping of a metric's recent shape against named reference patterns.

Both the metric's last ``n`` 1 s means and the pattern (resampled to ``n`` points by
linear interpolation) are z-normalised, so a pattern is a *shape* whatever the
metric's level and scale. The distance is classic DTW with absolute differences and a
Sakoe-Chiba band of ``n // 10 + 1`` points, divided by ``n``: 0 is the same shape,
and about 1 is no resemblance at all. A flat window (standard deviation below 1e-9)
has no shape and matches nothing.

Normalised patterns are cached per (pattern, length): they are computed once. The
distance itself is ``dtaidistance``'s C implementation (``window = band + 1``,
``inner_dist="euclidean"``: the same path costs and band); ``make bench-analytics``
measured it against the pure-Python loop this module had before (same results,
``bench/analytics.py`` keeps that loop as the baseline) and kept the faster.

Calibration of the default cut-off, 0.45, on 30-point windows (seeded runs of
``tests/unit/test_analytics.py``'s generators): white noise never came closer to any
built-in shape than 0.52 in 300 windows; a step of 5 to 40 sigma matched
``step_up`` within 0.45 in 155 of 200; a one-point spike of 10 to 60 sigma was always
closest to ``spike``, but within 0.45 in only 87 of 200: after z-normalisation the
noise around a spike weighs as much as the spike itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from dtaidistance import dtw
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

#: Built-in shapes; a rules file may add its own.
REFERENCE_PATTERNS: dict[str, tuple[float, ...]] = {
    "spike": (0,) * 12 + (1,) + (0,) * 12,
    "step_up": (0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1),
    "step_down": (1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0),
    "ramp_up": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11),
    "sawtooth": (0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3),
}


def znormalise(values: FloatArray) -> FloatArray | None:
    """Zero mean, unit deviation; None for a flat series.

    Scaled by the largest magnitude first: the deviation of values near ±1e300 would
    overflow, and the result does not depend on the scale.
    """
    scale = float(np.abs(values).max()) if len(values) else 0.0
    if not scale > 0:
        return None
    scaled = values / scale
    std = float(scaled.std())
    if std < 1e-9:
        return None
    normal: FloatArray = (scaled - scaled.mean()) / std
    return normal


@lru_cache(maxsize=256)
def resampled_reference(shape: tuple[float, ...], n: int) -> FloatArray | None:
    """A shape resampled to ``n`` points and z-normalised (cached); None if flat."""
    source = np.asarray(shape, dtype=np.float64)
    resampled = np.interp(np.linspace(0, len(source) - 1, n), np.arange(len(source)), source)
    return znormalise(resampled)


def dtw_distance(a: FloatArray, b: FloatArray, band: int) -> float:
    """DTW with |a_i - b_j| costs, constrained to ``|i - j| <= band``."""
    band = max(band, abs(len(a) - len(b)))
    # dtaidistance's window counts the diagonal itself: ``band + 1`` is |i - j| <= band.
    return float(
        dtw.distance_fast(
            np.ascontiguousarray(a, dtype=np.float64),
            np.ascontiguousarray(b, dtype=np.float64),
            window=band + 1,
            inner_dist="euclidean",
            use_pruning=False,
        )
    )


@dataclass(frozen=True)
class Match:
    pattern: str
    distance: float


def best_match(
    recent: FloatArray, patterns: dict[str, tuple[float, ...]], max_distance: float
) -> tuple[Match | None, dict[str, float]]:
    """The closest pattern within ``max_distance`` (or None), and every distance."""
    normal = znormalise(recent)
    if normal is None:
        return None, {}
    n = len(normal)
    distances = {}
    for name, shape in patterns.items():
        reference = resampled_reference(tuple(shape), n)
        if reference is not None:
            distances[name] = dtw_distance(normal, reference, n // 10 + 1) / n
    if not distances:
        return None, distances
    name = min(distances, key=distances.__getitem__)
    if distances[name] > max_distance:
        return None, distances
    return Match(name, distances[name]), distances
