"""Window semantics without a broker: boundaries, grace, lateness, the changelog form."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tables.samples as samples
import tables.windows as windows_module
from tables.sketch import DDSketch
from tables.windows import (
    PartitionWindows,
    SampleBatch,
    WindowKey,
    WindowSpec,
    WindowState,
    default_specs,
)

ONE_S = (WindowSpec("1s", 1_000, 500),)


def batch(source: str, rows: list[tuple[int, float | None]], field: str = "x") -> SampleBatch:
    return SampleBatch(
        source,
        np.array([t for t, _ in rows], dtype=np.int64),
        {field: np.array([np.nan if v is None else v for _, v in rows], dtype=np.float64)},
    )


def closed(windows: PartitionWindows) -> dict[tuple[str, int], tuple[int, float]]:
    return {
        (c.key.window, c.key.start_ms): (c.state.count, c.state.total) for c in windows.close_due()
    }


def test_samples_fall_in_half_open_windows() -> None:
    w = PartitionWindows(0, ONE_S)
    w.apply(batch("ui", [(999, 1.0), (1000, 2.0), (1999, 4.0), (2000, 8.0)]))
    w.apply(batch("ui", [(10_000, 0.0)]))  # stream time passes every window
    assert closed(w) == {("1s", 0): (1, 1.0), ("1s", 1000): (2, 6.0), ("1s", 2000): (1, 8.0)}


def test_a_window_closes_exactly_at_end_plus_grace_of_stream_time() -> None:
    w = PartitionWindows(0, ONE_S)
    w.apply(batch("ui", [(100, 1.0)]))
    w.apply(batch("ui", [(1499, 1.0)]))  # end 1000 + grace 500 not reached
    assert closed(w) == {}
    w.apply(batch("ui", [(1500, 1.0)]))
    assert closed(w) == {("1s", 0): (1, 1.0)}
    assert closed(w) == {}, "a window closes once"


def test_within_grace_counts_after_grace_is_late() -> None:
    w = PartitionWindows(0, ONE_S)
    w.apply(batch("ui", [(100, 1.0), (1400, 1.0)]))
    assert w.apply(batch("ui", [(900, 2.0)])) == []  # out of order, in grace
    w.apply(batch("ui", [(1600, 1.0)]))
    late = w.apply(batch("ui", [(950, 5.0), (1700, 1.0)]))
    assert [(s.window, s.window_start_ms, s.timestamps, s.fields) for s in late] == [
        ("1s", 0, [950], {"x": [5.0]})
    ]
    assert w.late_counts[("ui", "1s")] == 1
    assert closed(w) == {("1s", 0): (2, 3.0)}


def test_lateness_is_judged_per_window_size() -> None:
    specs = (WindowSpec("1s", 1_000, 0), WindowSpec("10s", 10_000, 0))
    w = PartitionWindows(0, specs)
    w.apply(batch("ui", [(5_000, 1.0)]))
    late = w.apply(batch("ui", [(3_000, 2.0)]))
    assert [s.window for s in late] == ["1s"]  # still on time for its 10 s window
    ten = w.window(WindowKey("ui", "x", "10s", 0))
    assert ten is not None and (ten.count, ten.total) == (2, 3.0)


def test_nulls_are_not_counted() -> None:
    w = PartitionWindows(0, ONE_S)
    w.apply(batch("ui", [(1, 2.0), (2, None), (3, 4.0)]))
    state = w.window(WindowKey("ui", "x", "1s", 0))
    assert state is not None
    assert state.stats() | {"p50": None, "p95": None, "p99": None} == {
        "count": 2,
        "sum": 6.0,
        "mean": 3.0,
        "min": 2.0,
        "max": 4.0,
        "last": 4.0,
        "p50": None,
        "p95": None,
        "p99": None,
    }


def test_state_survives_the_changelog_round_trip() -> None:
    w = PartitionWindows(0, ONE_S)
    w.apply(batch("ui", [(100, 1.0), (300, -2.5)]))
    w.apply(batch("ui", [(200, 9.0)]))  # arrives last, happened earlier
    key = WindowKey("ui", "x", "1s", 0)
    data = w.source_json("ui")
    assert data is not None
    again = PartitionWindows(0, ONE_S)
    again.restore_source("ui", orjson.loads(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)))
    restored, original = again.window(key), w.window(key)
    assert restored is not None and original is not None
    assert restored.stats() == original.stats()
    assert restored.stats()["last"] == -2.5  # by timestamp, not by arrival


def test_rows_out_of_order_within_a_batch_are_windowed_correctly() -> None:
    w = PartitionWindows(0, ONE_S)
    w.apply(batch("ui", [(1_200, 4.0), (100, 1.0), (1_100, 2.0), (300, 8.0)]))
    first = w.window(WindowKey("ui", "x", "1s", 0))
    second = w.window(WindowKey("ui", "x", "1s", 1_000))
    assert first is not None and second is not None
    assert (first.count, first.total, first.last) == (2, 9.0, 8.0)
    assert (second.count, second.total, second.last) == (2, 6.0, 4.0)


def test_a_closed_window_leaves_the_state_and_later_samples_are_late() -> None:
    w = PartitionWindows(0, ONE_S)
    w.apply(batch("ui", [(100, 1.0)]))
    w.take_dirty()
    w.apply(batch("ui", [(5_000, 1.0)]))
    assert [c.key for c in w.close_due()] == [WindowKey("ui", "x", "1s", 0)]
    assert w.window(WindowKey("ui", "x", "1s", 0)) is None
    assert "ui" in w.take_dirty(), "the source's record must be rewritten without it"
    late = w.apply(batch("ui", [(200, 1.0)]))
    assert [s.window_start_ms for s in late] == [0]


def test_a_source_with_no_open_window_has_no_record() -> None:
    w = PartitionWindows(0, ONE_S)
    w.apply(batch("ui", [(100, 1.0)]))
    w.apply(batch("system", [(9_000, 1.0)]))
    w.close_due()
    assert w.source_json("ui") is None
    assert w.source_json("system") is not None


# --- Properties: total over every finite input -------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
extreme = st.sampled_from(
    [0.0, -0.0, 5e-324, -5e-324, 1e-308, 1e308, -1e308, 1.7976931348623157e308]
)
values = st.one_of(finite, extreme, st.none())
timestamps = st.integers(min_value=0, max_value=2**53 - 1)


def sample_batches(
    max_rows: int,
    times: st.SearchStrategy[int],
    numbers: st.SearchStrategy[float | None],
    sources: list[str],
) -> st.SearchStrategy[SampleBatch]:
    """Messages of up to ``max_rows`` rows of fields a, b, c (``None``: a null)."""

    @st.composite
    def batch_of(draw: st.DrawFn) -> SampleBatch:
        rows = draw(st.integers(min_value=0, max_value=max_rows))
        ts = draw(st.lists(times, min_size=rows, max_size=rows))
        names = draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True))
        fields = {
            name: np.array(
                [
                    np.nan if v is None else v
                    for v in draw(st.lists(numbers, min_size=rows, max_size=rows))
                ],
                dtype=np.float64,
            )
            for name in names
        }
        return SampleBatch(draw(st.sampled_from(sources)), np.array(ts, dtype=np.int64), fields)

    return batch_of()


def batches() -> st.SearchStrategy[SampleBatch]:
    return sample_batches(30, timestamps, values, ["ui", "system"])


@settings(max_examples=300, deadline=None)
@given(st.lists(batches(), max_size=8))
def test_any_finite_input_is_windowed_without_error_and_stats_stay_in_range(
    stream: list[SampleBatch],
) -> None:
    specs = (WindowSpec("1s", 1_000, 0), WindowSpec("10s", 10_000, 500))
    w = PartitionWindows(0, specs)
    counted = 0
    for b in stream:
        late = w.apply(b)
        counted += b.values * len(specs) - sum(
            sum(v is not None for column in s.fields.values() for v in column) for s in late
        )
    closed = w.close_due()
    open_now = w.open_windows()
    states = [c.state for c in closed] + list(open_now.values())
    assert sum(s.count for s in states) == counted, "every sample is counted once or is late"
    for state in states:
        stats = state.stats()
        if state.count == 0:
            continue
        low, high = stats["min"], stats["max"]
        for name in ("p50", "p95", "p99", "mean", "last"):
            value = stats[name]
            assert value is None or math.isnan(value) or low <= value <= high, (name, stats)
        # The changelog form survives JSON, whatever the sum became.
        blob = orjson.dumps(state.to_json(), option=orjson.OPT_NON_STR_KEYS)
        again = WindowState.from_json(orjson.loads(blob))
        assert again.count == state.count and again.minimum == state.minimum


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.floats(min_value=-1e300, max_value=1e300, allow_nan=False),
        min_size=1,
        max_size=200,
    )
)
def test_within_the_accepted_range_a_window_sum_is_finite_and_its_mean_exact_enough(
    numbers: list[float],
) -> None:
    state = WindowState()
    state.add(np.array(numbers), np.arange(len(numbers), dtype=np.int64))
    stats = state.stats()
    assert math.isfinite(stats["sum"])
    assert stats["min"] <= stats["mean"] <= stats["max"]


def test_an_empty_batch_and_a_batch_of_nulls_change_nothing_but_stream_time() -> None:
    w = PartitionWindows(0, ONE_S)
    assert w.apply(SampleBatch("ui", np.array([], dtype=np.int64), {})) == []
    assert w.apply(batch("ui", [(5_000, None)])) == []
    assert w.stream_time_ms == 5_000
    assert all(s.count == 0 for s in w.open_windows().values())


# --- Batches: applying many messages at once equals applying them one by one ----------

small_values = st.one_of(st.integers(-1_000, 1_000).map(float), st.none())


def nearby_batches() -> st.SearchStrategy[SampleBatch]:
    """Messages over a few windows, some late, some out of order, some with nulls."""
    return sample_batches(8, st.integers(0, 40_000), small_values, ["ui", "system", "model:m"])


def oracle(
    specs: tuple[WindowSpec, ...], stream: list[SampleBatch]
) -> tuple[
    dict[tuple[str, str, str, int], list[tuple[int, int, float | None]]],
    list[list[tuple[str, int, list[int]]]],
]:
    """Kafka Streams' semantics sample by sample: each window's (ts, arrival, value)
    entries, and each message's late (window, start, timestamps)."""
    windows: dict[tuple[str, str, str, int], list[tuple[int, int, float | None]]] = defaultdict(
        list
    )
    lates: list[list[tuple[str, int, list[int]]]] = []
    stream_time = -(2**63)
    arrival = 0
    for batch in stream:
        order = sorted(range(batch.timestamps.size), key=lambda i: int(batch.timestamps[i]))
        rows = [(int(batch.timestamps[i]), i) for i in order]
        late: list[tuple[str, int, list[int]]] = []
        for spec in specs:
            by_start: dict[int, list[tuple[int, int]]] = {}
            for t, i in rows:
                by_start.setdefault(t - t % spec.size_ms, []).append((t, i))
            for start, members in sorted(by_start.items()):
                if start + spec.size_ms + spec.grace_ms <= stream_time:
                    late.append((spec.name, start, [t for t, _ in members]))
                    continue
                for name, column in batch.fields.items():
                    for t, i in members:
                        value = float(column[i])
                        windows[(batch.source, name, spec.name, start)].append(
                            (t, arrival + i, None if math.isnan(value) else value)
                        )
        arrival += batch.timestamps.size
        lates.append(late)
        if rows:
            stream_time = max(stream_time, rows[-1][0])
    return windows, lates


@settings(max_examples=300, deadline=None)
@given(
    st.lists(nearby_batches(), max_size=12),
    st.lists(st.booleans(), min_size=12, max_size=12),
    st.sampled_from(
        [default_specs(1_000), (WindowSpec("1s", 1_000, 0), WindowSpec("10s", 10_000, 500))]
    ),
)
def test_staged_batches_give_exactly_what_one_message_at_a_time_gives(
    stream: list[SampleBatch], cuts: list[bool], specs: tuple[WindowSpec, ...]
) -> None:
    w = PartitionWindows(0, specs)
    lates: list[list[tuple[str, int, list[int]]]] = []
    for i, b in enumerate(stream):
        w.stage(b)
        if cuts[i] or i == len(stream) - 1:
            for applied in w.apply_staged():
                assert not isinstance(applied, Exception)
                lates.append([(s.window, s.window_start_ms, s.timestamps) for s in applied])
    want_windows, want_lates = oracle(specs, stream)
    assert lates == want_lates
    got = w.open_windows()
    assert {(k.source, k.field, k.window, k.start_ms) for k in got} == set(want_windows)
    for key, state in got.items():
        entries = want_windows[(key.source, key.field, key.window, key.start_ms)]
        known = [(t, a, v) for t, a, v in entries if v is not None]
        assert state.count == len(known)
        if not known:
            continue
        numbers = [v for _, _, v in known]
        assert (state.total, state.minimum, state.maximum) == (
            sum(numbers),
            min(numbers),
            max(numbers),
        )
        assert state.last == max(known)[2], "the latest timestamp wins, ties the latest arrival"
        exact = DDSketch()
        exact.add_many(np.array(numbers))
        assert state.sketch == exact


@settings(max_examples=200, deadline=None)
@given(st.lists(nearby_batches(), max_size=12), st.integers(1, 3), st.integers(1, 3))
def test_staged_batches_meet_the_caps_as_one_message_at_a_time_does(
    stream: list[SampleBatch], max_sources: int, max_fields: int
) -> None:
    one, many = PartitionWindows(0, default_specs(1_000)), PartitionWindows(0, default_specs(1_000))
    for b in stream:
        decision = one.over_capacity(b, max_sources, max_fields)
        assert many.over_capacity(b, max_sources, max_fields) == decision
        if decision is None:
            one.apply(b)
            many.stage(b)
    many.apply_staged()
    assert {k: s.count for k, s in one.open_windows().items()} == {
        k: s.count for k, s in many.open_windows().items()
    }


def test_a_batch_whose_arithmetic_fails_is_applied_message_by_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = PartitionWindows(0, ONE_S)
    good, bad = batch("ui", [(100, 1.0)]), batch("system", [(200, 2.0)])
    real = samples.group_batches

    def fails_with_bad(staged: list[SampleBatch], *args: Any) -> Any:
        if any(b.source == "system" for b in staged):
            raise MemoryError("no room")
        return real(staged, *args)

    monkeypatch.setattr(windows_module, "group_batches", fails_with_bad)
    w.stage(good)
    w.stage(bad)
    applied = w.apply_staged()
    assert applied[0] == [] and isinstance(applied[1], MemoryError)
    state = w.window(WindowKey("ui", "x", "1s", 0))
    assert state is not None and state.count == 1, "the good message counts once"
    assert w.window(WindowKey("system", "x", "1s", 0)) is None
