from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tables.sketch import ALPHA, GAMMA, MAX_BUCKETS, MIN_INDEXABLE, DDSketch
from tables.sketch import _value as sketch_value


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
    assert merged == whole
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


# --- Properties ----------------------------------------------------------------------------

indexable = st.floats(min_value=MIN_INDEXABLE, max_value=1.7976931348623157e308).flatmap(
    lambda m: st.sampled_from([m, -m])
)
sketchable = st.one_of(indexable, st.just(0.0))


@settings(max_examples=300, deadline=None)
@given(st.lists(sketchable, min_size=1, max_size=300), st.floats(min_value=0.0, max_value=1.0))
def test_any_quantile_of_any_finite_values_is_within_the_bound(
    values: list[float], q: float
) -> None:
    sketch = DDSketch()
    sketch.add_many(np.array(values))
    estimate = sketch.quantile(q)
    exact = float(np.quantile(np.array(values), q, method="lower"))
    assert estimate is not None
    # The top bucket's midpoint may not be a double: the sketch says inf there, which
    # the windows clamp to their max (WindowState.quantile).
    if math.isfinite(estimate):
        assert abs(estimate - exact) <= ALPHA * abs(exact) * (1 + 1e-12) + 1e-300


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(sketchable, max_size=50), max_size=6))
def test_merging_in_any_grouping_equals_one_sketch_and_survives_json(
    parts: list[list[float]],
) -> None:
    whole, merged = DDSketch(), DDSketch()
    for part in parts:
        piece = DDSketch()
        piece.add_many(np.array(part, dtype=np.float64))
        merged.merge(piece)
        whole.add_many(np.array(part, dtype=np.float64))
    assert merged == whole
    encoded = orjson.dumps(merged.to_json(), option=orjson.OPT_NON_STR_KEYS)
    again = DDSketch.from_json(orjson.loads(encoded))
    assert again == whole
    assert again.quantile(0.5) == whole.quantile(0.5)


def test_the_extremes_of_the_double_range_do_not_overflow() -> None:
    sketch = DDSketch()
    sketch.add_many(np.array([1.7976931348623157e308, -1.7976931348623157e308, 5e-324, 0.0]))
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert sketch.quantile(q) is not None


# --- The bucket bound ----------------------------------------------------------------------

spreads = st.tuples(
    st.integers(0, 2**32 - 1),  # seed
    st.floats(min_value=-9.0, max_value=0.0),  # lowest decade
    st.floats(min_value=0.0, max_value=300.0),  # highest decade
    st.integers(1, 20_000),  # values
)


def spread_values(seed: int, low: float, high: float, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    magnitudes = 10.0 ** rng.uniform(low, high, n)
    values: np.ndarray = magnitudes * rng.choice([-1.0, 1.0], n)
    return values


@settings(max_examples=150, deadline=None)
@given(spreads, st.floats(min_value=0.0, max_value=1.0), st.integers(1, 5))
def test_the_bucket_count_is_bounded_and_quantiles_in_the_kept_span_keep_the_bound(
    spread: tuple[int, float, float, int], q: float, parts: int
) -> None:
    values = spread_values(*spread)
    whole, merged = DDSketch(), DDSketch()
    whole.add_many(values)
    for part in np.array_split(values, parts):
        piece = DDSketch()
        piece.add_many(part)
        merged.merge(piece)
    assert len(whole.positive) <= MAX_BUCKETS and len(whole.negative) <= MAX_BUCKETS
    assert whole.count == values.size  # collapsing moves counts, never loses them
    assert merged == whole  # collapse commutes with merging
    exact = float(np.quantile(values, q, method="lower"))
    estimate = whole.quantile(q)
    assert estimate is not None
    store = whole.positive if exact > 0 else whole.negative
    lowest_kept = GAMMA ** (min(store) - 1) if store else 0.0
    if abs(exact) > lowest_kept * GAMMA:  # above the collapsed span: the 1 % guarantee
        assert abs(estimate - exact) <= ALPHA * abs(exact) * (1 + 1e-12)
    else:  # collapsed: reported as the lowest kept bucket, never smaller in magnitude
        assert abs(estimate) >= abs(exact) * (1 - ALPHA)


def test_data_over_less_than_17_decades_never_collapses() -> None:
    values = 10.0 ** np.linspace(-3.0, 14.0, 50_000)
    sketch = DDSketch()
    sketch.add_many(values)
    assert len(sketch.positive) < MAX_BUCKETS  # nothing folded: the full guarantee
    for q in (0.0, 0.01, 0.5, 1.0):
        exact = float(np.quantile(values, q, method="lower"))
        assert abs(sketch.quantile(q) - exact) <= ALPHA * exact  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(sketchable, min_size=1, max_size=300),
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=6),
)
def test_one_walk_for_many_quantiles_gives_what_each_walk_gives(
    values: list[float], qs: list[float]
) -> None:
    sketch = DDSketch()
    sketch.add_many(np.array(values))
    # The reference: every value's bucket midpoint, sorted, the one at each rank.
    centres = sorted(
        [-sketch_value(k) for k, c in sketch.negative.items() for _ in range(c)]
        + [0.0] * sketch.zero
        + [sketch_value(k) for k, c in sketch.positive.items() for _ in range(c)]
    )
    expected = [centres[math.floor(q * (sketch.count - 1))] for q in qs]
    assert sketch.quantiles(qs) == expected
    assert [sketch.quantile(q) for q in qs] == expected


def test_a_changelog_in_the_earlier_form_restores_the_same_sketch() -> None:
    """Records written before the two-list form (key to count, keys as strings)."""
    sketch = DDSketch()
    sketch.add_many(np.array([0.0, -3.0, -3.1, 5.0, 5.0, 1e-12, 7e200]))
    earlier = {
        "p": {str(k): c for k, c in sketch.positive.items()},
        "n": {str(k): c for k, c in sketch.negative.items()},
        "z": sketch.zero,
    }
    assert DDSketch.from_json(orjson.loads(orjson.dumps(earlier))) == sketch
    assert DDSketch.from_json(orjson.loads(orjson.dumps(sketch.to_json()))) == sketch


def test_a_record_whose_lists_disagree_is_refused() -> None:
    with pytest.raises(ValueError, match="bucket keys"):
        DDSketch.from_json({"pk": [1, 2], "pc": [1], "nk": [], "nc": [], "z": 0})
