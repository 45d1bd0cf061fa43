from __future__ import annotations

import numpy as np
import orjson
import pytest

from tables.sketch import ALPHA, DDSketch


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(1).lognormal(3.0, 1.5, 20_000),
        np.random.default_rng(2).normal(0.0, 50.0, 20_000),  # both signs and zero-ish
        np.random.default_rng(3).exponential(16.67, 5_000),
        np.arange(1, 101, dtype=np.float64),
    ],
)
@pytest.mark.parametrize("q", [0.0, 0.5, 0.95, 0.99, 1.0])
def test_quantiles_are_within_the_relative_error_bound(values: np.ndarray, q: float) -> None:
    sketch = DDSketch()
    sketch.add_many(values)
    exact = float(np.quantile(values, q, method="lower"))
    estimate = sketch.quantile(q)
    assert estimate is not None
    assert abs(estimate - exact) <= ALPHA * abs(exact) + 1e-9


def test_merging_equals_adding_everything_to_one() -> None:
    rng = np.random.default_rng(7)
    parts = [rng.gamma(2.0, 10.0, 1000) for _ in range(10)]
    merged, whole = DDSketch(), DDSketch()
    for part in parts:
        piece = DDSketch()
        piece.add_many(part)
        merged.merge(piece)
    whole.add_many(np.concatenate(parts))
    assert merged.to_json() == whole.to_json()
    assert merged.count == 10_000


def test_zero_and_json_round_trip() -> None:
    sketch = DDSketch()
    sketch.add_many(np.array([0.0, 0.0, -3.0, 5.0]))
    encoded = orjson.dumps(sketch.to_json(), option=orjson.OPT_NON_STR_KEYS)
    again = DDSketch.from_json(orjson.loads(encoded))  # string keys after JSON
    assert again.count == 4
    assert again.quantile(0.5) == 0.0
    assert again.quantile(0.0) == pytest.approx(-3.0, rel=ALPHA)


def test_empty_sketch_has_no_quantile() -> None:
    assert DDSketch().quantile(0.5) is None
