"""Regimes of series with known answers, and totality over any finite series."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.systems import logistic_map, lorenz_x, noisy_constant, noisy_sine
from kestrel.analytics.attractor import MIN_POINTS, classify


def test_a_constant_plus_noise_is_a_fixed_point() -> None:
    assert classify(noisy_constant(300, seed=1)).kind == "fixed_point"
    assert classify(np.full(100, 42.0)).kind == "fixed_point"


@pytest.mark.parametrize("period", [8, 20, 50])
def test_sines_are_periodic_with_their_period(period: int) -> None:
    regime = classify(noisy_sine(300, period, seed=period))
    assert regime.kind == "periodic"
    assert regime.period is not None and abs(regime.period - period) / period < 0.02


def test_the_logistic_map_at_r_4_is_chaotic_with_exponent_ln_2() -> None:
    regime = classify(logistic_map(3000))
    assert regime.kind == "chaotic"
    assert regime.lyapunov is not None and abs(regime.lyapunov - math.log(2)) / math.log(2) < 0.15


def test_the_lorenz_system_is_chaotic_with_exponent_about_0_9() -> None:
    dt = 0.01
    regime = classify(lorenz_x(3000, dt))
    assert regime.kind == "chaotic"
    assert regime.lyapunov is not None and abs(regime.lyapunov / dt - 0.906) / 0.906 < 0.15


def test_a_ramp_and_a_random_walk_are_drifting() -> None:
    rng = np.random.default_rng(3)
    assert classify(np.arange(200) * 0.1 + rng.normal(size=200)).kind == "drifting"
    assert classify(np.cumsum(rng.normal(size=300))).kind == "drifting"


def test_a_short_series_is_refused_with_the_minimum() -> None:
    with pytest.raises(ValueError, match=str(MIN_POINTS)):
        classify(np.zeros(MIN_POINTS - 1))


finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.lists(finite, min_size=MIN_POINTS, max_size=150),
        st.lists(st.sampled_from([0.0, 5e-324, -5e-324, 1e308, -1e308]), min_size=MIN_POINTS),
        st.tuples(
            st.integers(0, 2**32 - 1), st.floats(-300, 300), st.integers(MIN_POINTS, 200)
        ).map(lambda a: np.random.default_rng(a[0]).normal(size=a[2]) * 10.0 ** a[1]),
    )
)
def test_any_finite_series_gets_a_regime_with_finite_evidence(values: list[float]) -> None:
    regime = classify(np.asarray(values, dtype=np.float64))
    assert regime.kind in ("fixed_point", "periodic", "chaotic", "drifting")
    assert math.isfinite(regime.drift) and 0.0 <= regime.determinism <= 1.0
    assert regime.lag >= 1 and regime.dimension >= 1
    for value in (regime.period, regime.lyapunov):
        assert value is None or math.isfinite(value)
