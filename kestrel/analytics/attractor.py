"""Attractor and regime of a series: fixed point, periodic, chaotic or drifting.

The steps, for a series ``x`` of ``n`` evenly spaced values (a watched field's 1 s
means in the analytics worker):

1. **Drift.** A least-squares line through ``x``: if it moves more than
   ``DRIFT_SIGMAS`` residual standard deviations over the window, the series is
   *drifting* (it has not settled on any attractor yet) and the rest is skipped.
2. **Phase-space reconstruction** by delay embedding: the lag ``tau`` is the first
   local minimum of the average mutual information between ``x(t)`` and ``x(t+tau)``
   (Fraser & Swinney 1986; histogram estimate), or, without one, the first lag where
   the autocorrelation falls below 1/e; the dimension ``m`` is the smallest whose
   false-nearest-neighbour fraction is under 10 % (Kennel, Brown & Abarbanel 1992).
3. **Largest Lyapunov exponent** by Rosenstein's method (``nolds.lyap_r``): the mean
   log divergence of initially nearest neighbours, as a curve over ``k`` steps; its
   slope is fitted over the curve's linear stretch, from a third of the way to where it
   has risen 85 % of the way to its plateau (the first steps are the alignment
   transient, the plateau is the attractor's size). Per sample; times the sampling
   rate per second.
4. **Determinism**: one-step nearest-neighbour forecasts in the embedding, their
   error against the series' deviation (1: perfectly predictable, 0: noise).
5. **Classification**: a series that wanders (:func:`wanders`) is *drifting*; a flat
   series (a deviation under a thousandth of its level counts as flat), or one
   without determinism and without a strong
   autocorrelation peak, is a *fixed point* (a level plus noise); a deterministic
   series whose exponent, over one decorrelation time (the first zero of the
   autocorrelation), exceeds ``CHAOS_PER_DECORRELATION`` is *chaotic*; one whose
   autocorrelation has a peak above ``PERIODIC_ACF`` at lag ``P > 1`` is *periodic*
   with period ``P`` (refined by a parabola through the peak); anything else
   deterministic is *periodic* at its strongest spectral line.

The thresholds are calibrated on the validation systems of ``make bench-analytics``
(a constant plus noise, sines of known periods, the logistic map at r = 4, the
Lorenz system): the table there shows each estimate against its known value.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import nolds
import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
Kind = Literal["fixed_point", "periodic", "chaotic", "drifting"]

DRIFT_SIGMAS = 4.0
PERIODIC_ACF = 0.5
CHAOS_PER_DECORRELATION = 0.15
MIN_DETERMINISM = 0.5
MIN_POINTS = 40
FLAT_RELATIVE = 1e-3
WANDER_STEPS = 4
WANDER_RATIO = 0.6
FNN_RATIO = 10.0  # a neighbour is false if the next coordinate moves it this much farther
FNN_FRACTION = 0.1
FNN_SIZE = 2.0  # ... or ends this many attractor deviations away
MAX_DIMENSION = 8


@dataclass(frozen=True)
class Regime:
    """What a series does, with the evidence."""

    kind: Kind
    period: float | None  # samples, for a periodic series
    lyapunov: float | None  # per sample; None when not estimated (drifting, flat, short)
    lag: int
    dimension: int
    determinism: float
    drift: float  # the fitted line's change over the window, in residual deviations

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def classify(values: FloatArray) -> Regime:
    """The regime of ``values`` (finite floats, oldest first); see the module."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n < MIN_POINTS:
        raise ValueError(f"a regime needs at least {MIN_POINTS} values, got {n}")
    scale = max(float(np.abs(x).max()), 1e-300)
    x = x / scale  # every step below is scale-free; this keeps ±1e308 finite
    spread = float(x.std())
    if spread < 1e-9 or spread < FLAT_RELATIVE * abs(float(x.mean())):
        # Flat, or a ripple a thousandth of its level: whatever its shape, it holds still.
        return Regime("fixed_point", None, None, 1, 1, 1.0, 0.0)
    t = np.arange(n, dtype=np.float64)
    slope, intercept = np.polyfit(t, x, 1)
    residual = x - (slope * t + intercept)
    rest = float(residual.std())
    drift = float(slope * (n - 1) / rest) if rest > 1e-12 else math.inf
    if abs(drift) > DRIFT_SIGMAS:
        return Regime("drifting", None, None, 1, 1, 0.0, _finite(drift))
    acf = autocorrelation(residual)
    period = acf_period(acf)
    lag = delay_lag(residual, acf)
    dimension = embedding_dimension(residual, lag)
    determinism = forecast_skill(residual, dimension, lag)
    if period is not None:
        return Regime("periodic", period, None, lag, dimension, determinism, drift)
    decorrelation = first_zero(acf)
    if wanders(x - x.mean()):  # the series as it came: a trend is part of wandering
        return Regime("drifting", None, None, lag, dimension, determinism, drift)
    if determinism < MIN_DETERMINISM:
        return Regime("fixed_point", None, None, lag, dimension, determinism, drift)
    lyapunov = largest_lyapunov(residual, dimension, lag)
    if lyapunov is not None and lyapunov * decorrelation > CHAOS_PER_DECORRELATION:
        return Regime("chaotic", None, lyapunov, lag, dimension, determinism, drift)
    return Regime(
        "periodic", spectral_period(residual), lyapunov, lag, dimension, determinism, drift
    )


def wanders(x: FloatArray) -> bool:
    """Does ``x`` wander (a random walk, a slow swing) rather than return to an attractor?

    A variance ratio over decorrelation times ``d``: ``Var(x[t + 4d] - x[t])`` against
    four times ``Var(x[t + d] - x[t])``. Beyond ``d`` a stationary series has forgotten
    where it was, so both are about twice its variance and the ratio is about 1/4
    (noise, sines, the logistic map and Lorenz all measured 0.01-0.29); steps of a walk
    add up, so its ratio is about 1. A window too short to hold 4d twice wanders too:
    it is still correlated across an eighth of itself, with no period.
    """
    decorrelation = first_zero(autocorrelation(x))
    far = WANDER_STEPS * decorrelation
    if far >= len(x) // 2:
        return True
    step = x[decorrelation:] - x[:-decorrelation]
    span = x[far:] - x[:-far]
    base = WANDER_STEPS * float(step.var())
    return base > 0 and float(span.var()) / base > WANDER_RATIO


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.copysign(1e308, value)


def autocorrelation(x: FloatArray) -> FloatArray:
    """Autocorrelation at lags 0 .. n/2 (FFT; biased estimate)."""
    n = len(x)
    centred = x - x.mean()
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(centred, size)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), size)[: n // 2 + 1]
    acf = acf / acf[0] if acf[0] > 0 else np.zeros_like(acf)
    result: FloatArray = acf.astype(np.float64)
    return result


def first_zero(acf: FloatArray) -> int:
    """The first lag where the autocorrelation is at or below zero (at least 1)."""
    below = np.flatnonzero(acf[1:] <= 0)
    return int(below[0]) + 1 if below.size else len(acf) - 1


def acf_period(biased: FloatArray) -> float | None:
    """The first autocorrelation peak past its first zero, if it exceeds PERIODIC_ACF."""
    n = 2 * (len(biased) - 1)
    acf = biased * n / (n - np.arange(len(biased)))  # unbiased: a long period is not damped
    start = first_zero(acf)
    for k in range(max(start, 2), len(acf) - 1):
        if acf[k] >= acf[k - 1] and acf[k] >= acf[k + 1] and acf[k] > PERIODIC_ACF:
            # A parabola through the peak and its neighbours: the period between samples.
            left, mid, right = acf[k - 1], acf[k], acf[k + 1]
            curvature = left - 2 * mid + right
            offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
            twice = 2 * k
            # A period repeats: the correlation two periods on is still high (chaos,
            # which can correlate once, decays). Two periods must fit in half the window.
            if twice + 1 >= len(acf) or acf[twice - 1 : twice + 2].max() < 0.8 * mid:
                return None
            return float(k + offset)
    return None


def spectral_period(x: FloatArray) -> float | None:
    """The period of the strongest non-zero frequency (samples)."""
    power = np.abs(np.fft.rfft(x - x.mean())) ** 2
    if len(power) < 3:
        return None
    k = int(np.argmax(power[1:])) + 1
    return float(len(x) / k)


def delay_lag(x: FloatArray, acf: FloatArray | None = None, max_lag: int | None = None) -> int:
    """First minimum of the average mutual information; else where the ACF drops below 1/e."""
    n = len(x)
    acf = autocorrelation(x) if acf is None else acf
    if acf[1] < 1 / math.e:
        return 1  # decorrelated in one step (a map, or noise): no slower structure to unfold
    max_lag = max_lag or max(2, n // 10)
    bins = max(4, int(math.sqrt(n / 5)))
    edges = np.histogram_bin_edges(x, bins=bins)
    symbols = np.clip(np.digitize(x, edges[1:-1]), 0, bins - 1)
    info = [mutual_information(symbols[:-k], symbols[k:], bins) for k in range(1, max_lag + 1)]
    for k in range(1, len(info) - 1):
        if info[k] < info[k - 1] and info[k] <= info[k + 1]:
            return k + 1
    below = np.flatnonzero(acf[1:] < 1 / math.e)
    return int(below[0]) + 1 if below.size else 1


def mutual_information(a: NDArray[np.int64], b: NDArray[np.int64], bins: int) -> float:
    joint = np.bincount(a * bins + b, minlength=bins * bins).astype(np.float64)
    joint /= joint.sum()
    pa = joint.reshape(bins, bins).sum(axis=1)
    pb = joint.reshape(bins, bins).sum(axis=0)
    outer = np.outer(pa, pb).ravel()
    mask = joint > 0
    return float((joint[mask] * np.log(joint[mask] / outer[mask])).sum())


def embed(x: FloatArray, dimension: int, lag: int) -> FloatArray:
    """Delay vectors ``(x[i], x[i + lag], ..., x[i + (dimension - 1) lag])``, one a row."""
    rows = len(x) - (dimension - 1) * lag
    if rows < 2:
        raise ValueError("the series is too short for this embedding")
    index = np.arange(rows)[:, None] + lag * np.arange(dimension)[None, :]
    vectors: FloatArray = x[index]
    return vectors


def _nearest(vectors: FloatArray, exclude: int) -> tuple[NDArray[np.int64], FloatArray]:
    """Each row's nearest other row (not within ``exclude`` steps in time), and distance."""
    squared = (vectors**2).sum(axis=1)
    d2 = squared[:, None] + squared[None, :] - 2 * vectors @ vectors.T
    rows = np.arange(len(vectors))
    d2[np.abs(rows[:, None] - rows[None, :]) <= exclude] = np.inf
    nearest = np.argmin(d2, axis=1)
    return nearest, np.sqrt(np.maximum(d2[rows, nearest], 0.0))


def embedding_dimension(x: FloatArray, lag: int) -> int:
    """Smallest dimension whose false-nearest-neighbour fraction is under FNN_FRACTION."""
    for dimension in range(1, MAX_DIMENSION):
        rows = len(x) - dimension * lag
        if rows < 10:
            return dimension
        vectors = embed(x, dimension, lag)[:rows]
        nearest, distance = _nearest(vectors, exclude=0)
        following = np.abs(x[np.arange(rows) + dimension * lag] - x[nearest + dimension * lag])
        usable = distance > 0
        if not usable.any():
            return dimension
        # Kennel's two tests: the next coordinate moves the neighbour far relative to
        # its distance, or far relative to the attractor's size.
        grown = np.sqrt(distance[usable] ** 2 + following[usable] ** 2) / float(x.std())
        false = (following[usable] / distance[usable] > FNN_RATIO) | (grown > FNN_SIZE)
        if false.mean() < FNN_FRACTION:
            return dimension
    return MAX_DIMENSION


def forecast_skill(x: FloatArray, dimension: int, lag: int) -> float:
    """1 - (one-step nearest-neighbour forecast error) / (the series' deviation)."""
    vectors = embed(x, dimension, lag)[:-1]
    nearest, _ = _nearest(vectors, exclude=lag)
    start = (dimension - 1) * lag
    actual = x[start + 1 : start + 1 + len(vectors)]
    predicted = x[start + 1 + nearest]
    error = float(np.sqrt(np.mean((actual - predicted) ** 2)))
    spread = float(x.std())
    return max(0.0, 1.0 - error / spread) if spread > 0 else 1.0


def largest_lyapunov(
    x: FloatArray, dimension: int, lag: int, steps: int | None = None
) -> float | None:
    """Rosenstein's estimate per sample, fitted on the divergence curve's linear stretch."""
    n = len(x)
    steps = steps or max(5, min(n // 4, 30 * lag))
    min_tsep = max(lag, first_zero(autocorrelation(x)))
    if n - (dimension - 1) * lag - steps < 2 * min_tsep + 10:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nolds warns on fits and short series
        try:
            _, (ks, curve, _) = nolds.lyap_r(
                x,
                emb_dim=dimension,
                lag=lag,
                min_tsep=min_tsep,
                trajectory_len=steps,
                fit="poly",
                debug_data=True,
            )
        except (ValueError, np.linalg.LinAlgError):
            return None
    curve = np.asarray(curve, dtype=np.float64)
    finite = np.isfinite(curve)
    if finite.sum() < 4:
        return None
    ks, curve = np.asarray(ks, dtype=np.float64)[finite], curve[finite]
    rise = curve.max() - curve[0]
    if rise <= 0:
        return 0.0
    end = int(np.argmax(curve >= curve[0] + 0.85 * rise))
    start = end // 3
    if end - start < 3:
        start, end = 0, max(end, 3)
    slope = float(np.polyfit(ks[start : end + 1], curve[start : end + 1], 1)[0])
    return slope if math.isfinite(slope) else None
