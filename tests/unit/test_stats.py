from __future__ import annotations

import pytest

from kestrel.stats import LatencyReservoir


def test_percentiles_cover_only_the_recent_horizon() -> None:
    reservoir = LatencyReservoir(size=100, horizon_s=10)
    for i in range(50):
        reservoir.add(5_000.0, now=float(i))  # an old backlog
    for i in range(50):
        reservoir.add(float(i % 10), now=100.0 + i * 0.1)
    p50, p99 = reservoir.percentiles(0.5, 0.99, now=105.0)
    assert p50 == pytest.approx(4.5)
    assert p99 is not None and p99 < 10
    assert reservoir.count == 100


def test_the_ring_keeps_memory_fixed() -> None:
    reservoir = LatencyReservoir(size=8, horizon_s=1e9)
    for i in range(1000):
        reservoir.add(float(i), now=float(i))
    assert reservoir.percentiles(0.0, 1.0, now=1000.0) == [992.0, 999.0]
    assert reservoir.percentiles(0.5, now=1e12) == [None]
