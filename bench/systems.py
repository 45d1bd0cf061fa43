"""Series with known regimes, for validating kestrel.analytics.attractor (tests, bench)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def noisy_constant(n: int, level: float = 5.0, noise: float = 0.1, seed: int = 0) -> FloatArray:
    return level + noise * np.random.default_rng(seed).normal(size=n)


def noisy_sine(n: int, period: float, noise: float = 0.05, seed: int = 0) -> FloatArray:
    t = np.arange(n)
    values: FloatArray = np.sin(2 * np.pi * t / period) + noise * np.random.default_rng(
        seed
    ).normal(size=n)
    return values


def logistic_map(n: int, r: float = 4.0, x0: float = 0.3) -> FloatArray:
    """x' = r x (1 - x); at r = 4 its largest Lyapunov exponent is ln 2 per step."""
    x = np.empty(n)
    x[0] = x0
    for i in range(1, n):
        x[i] = r * x[i - 1] * (1 - x[i - 1])
    return x


def lorenz_x(n: int, dt: float = 0.01, transient: int = 2000) -> FloatArray:
    """x of the Lorenz system (sigma 10, rho 28, beta 8/3; exponent 0.906 per unit time),
    integrated by RK4 at ``dt`` after a transient."""

    def f(v: FloatArray) -> FloatArray:
        x, y, z = v
        return np.array([10 * (y - x), x * (28 - z) - y, x * y - 8 / 3 * z])

    state = np.array([1.0, 1.0, 1.0])
    out = np.empty(n)
    for i in range(n + transient):
        k1 = f(state)
        k2 = f(state + dt / 2 * k1)
        k3 = f(state + dt / 2 * k2)
        k4 = f(state + dt * k3)
        state = state + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if i >= transient:
            out[i - transient] = state[0]
    return out
