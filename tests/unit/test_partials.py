"""The columnar baselines' partials (bench/partials.py) against the direct computation."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.partials import chunks, final, merge
from tables.sketch import DDSketch

finite = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=10**12),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=5_000), finite, st.none() | finite),
        min_size=1,
        max_size=60,
    ),
)
def test_chunks_merged_per_second_give_each_windows_statistics(
    start: int, rows: list[tuple[int, float, float | None]]
) -> None:
    rows.sort(key=lambda r: r[0])  # a batch is in time order
    message = {
        "samples": {
            "timestamp": [start + dt for dt, _, _ in rows],
            "data": {"a": [a for _, a, _ in rows], "b": [b for _, _, b in rows]},
        }
    }
    windows: dict[int, dict[str, Any]] = defaultdict(dict)
    for first_ts, partials in chunks(message):
        windows[first_ts // 1000] = merge(windows.get(first_ts // 1000), partials)
    expected: dict[int, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for dt, a, b in rows:
        second = (start + dt) // 1000
        expected[second]["a"].append((start + dt, a))
        if b is not None:
            expected[second]["b"].append((start + dt, b))
    assert set(windows) == set(expected)
    for second, fields in expected.items():
        stats = final(windows[second])
        assert set(stats) == set(fields)
        for name, pairs in fields.items():
            values = np.array([v for _, v in pairs])
            sketch = DDSketch()
            sketch.add_many(values)
            got = stats[name]
            assert got["count"] == len(values)
            assert got["min"] == values.min() and got["max"] == values.max()
            assert got["last"] == pairs[-1][1] or pairs[-1][0] == pairs[-2][0]
            for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
                raw = sketch.quantile(q)
                assert raw is not None
                assert got[key] == min(max(raw, values.min()), values.max())


def test_a_single_sample_message_is_one_chunk() -> None:
    [(ts, partials)] = chunks({"timestamp": 1_500, "data": {"x": 2.0}})
    assert ts == 1_500 and partials["x"][:6] == [1, 2.0, 2.0, 2.0, 2.0, 1_500]
