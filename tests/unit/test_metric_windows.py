"""The window arithmetic of the tracer table, without a broker."""

from __future__ import annotations

from functools import reduce

from tables.metric_windows import accumulate, empty, field_key, to_aggregate


def test_accumulate_counts_and_sums() -> None:
    acc = reduce(accumulate, [1.5, 2.25, 4.0], empty())
    assert acc == [3, 7.75]


def test_closed_window_becomes_a_half_open_millisecond_range() -> None:
    # Faust reports a 1 s window starting at t as (t, t + 0.9).
    aggregate = to_aggregate(
        field_key("model:m", "ttft_ms"), (1700000000.0, 1700000000.9), [4, 10.0]
    )
    assert aggregate.source == "model:m"
    assert aggregate.field == "ttft_ms"
    assert (aggregate.window_start_ms, aggregate.window_end_ms) == (
        1_700_000_000_000,
        1_700_000_001_000,
    )
    assert (aggregate.count, aggregate.sum, aggregate.mean) == (4, 10.0, 2.5)
    assert aggregate.key == "model:m|ttft_ms|1s|1700000000000"


def test_field_names_may_contain_the_separator() -> None:
    aggregate = to_aggregate(field_key("ui", "a|b"), (0.0, 0.9), [1, 1.0])
    assert (aggregate.source, aggregate.field) == ("ui", "a|b")
