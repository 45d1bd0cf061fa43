"""The telemetry stage's partition state and its changelog records, without a broker."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kestrel.state import Restored
from tables.metric_windows import TelemetryPartition, aggregate_json, to_aggregate
from tables.windows import SampleBatch, WindowKey, WindowState, default_specs

SPECS = default_specs(1_000)


def batch(source: str, ts: list[int], values: list[float]) -> SampleBatch:
    return SampleBatch(
        source, np.array(ts, dtype=np.int64), {"x": np.array(values, dtype=np.float64)}
    )


def restored(records: dict[bytes, bytes]) -> Restored:
    return Restored(3, records, {}, {}, 0, len(records), 0.0)


def test_a_closed_window_is_published_with_every_statistic() -> None:
    state = WindowState()
    state.add(np.array([4.0, 1.0, 2.0]), np.array([10, 30, 20], dtype=np.int64))
    aggregate = to_aggregate(WindowKey("ui", "frame_time_ms", "1s", 5_000), state, 1_000)
    assert aggregate.key == "ui|frame_time_ms|1s|5000"
    assert (aggregate.window_start_ms, aggregate.window_end_ms) == (5_000, 6_000)
    assert (aggregate.count, aggregate.sum, aggregate.mean) == (3, 7.0, 7.0 / 3)
    assert (aggregate.min, aggregate.max, aggregate.last) == (1.0, 4.0, 1.0)
    assert aggregate.p50 is not None and abs(aggregate.p50 - 2.0) <= 0.02


def test_the_changelog_records_rebuild_the_same_partition() -> None:
    part = TelemetryPartition(3, SPECS, 60)
    model = part.topic("metrics.model")
    assert model.admit("model:a", [1_000, 1_100])
    model.windows.apply(batch("model:a", [1_000, 1_100], [1.0, 2.0]))
    records = dict(part.changes())
    assert set(records) == {b"s|metrics.model|model:a", b"t|metrics.model"}
    assert list(part.changes()) == [], "nothing changed since"

    again = TelemetryPartition.restore(restored(records), SPECS, 60)  # type: ignore[arg-type]
    topic = again.topic("metrics.model")
    assert topic.windows.stream_time_ms == 1_100
    state = topic.windows.window(WindowKey("model:a", "x", "10s", 0))
    assert state is not None and (state.count, state.total) == (2, 3.0)
    # The rate counts came back too: a replay decides as the first run did.
    assert topic.limiter.counts("model:a") == {1: 2}


def test_a_source_whose_windows_all_closed_becomes_a_tombstone() -> None:
    part = TelemetryPartition(0, SPECS, 60)
    topic = part.topic("metrics.ui")
    topic.windows.apply(batch("ui", [1_000], [1.0]))
    list(part.changes())
    topic.windows.apply(batch("ui", [10_000_000], [1.0]))  # every window of 1 s closes
    closed = list(part.close_due())
    assert {c.key.window for c in closed} == {"1s", "10s", "5m"}
    records = dict(part.changes())
    assert records[b"s|metrics.ui|ui"] is not None  # the new sample's windows remain
    topic.windows.stream_time_ms = 20_000_000
    list(part.close_due())
    assert dict(part.changes())[b"s|metrics.ui|ui"] is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(-1e300, 1e300, allow_nan=False), st.just(math.nan)),
        max_size=40,
    ),
    st.sampled_from(["1s", "10s", "5m"]),
    st.integers(0, 2**53 - 1),
    st.booleans(),
)
def test_the_emitted_bytes_are_the_schemas_own_encoding(
    values: list[float], window: str, start_ms: int, overflowed: bool
) -> None:
    """aggregate_json skips the model; a consumer must not see the difference."""
    state = WindowState()
    state.add(np.array(values, dtype=np.float64), np.arange(len(values), dtype=np.int64))
    if overflowed and state.count:
        state.total = math.inf  # a sum past the float range (the schema writes null)
    key = WindowKey("model:m", "x", window, start_ms)
    size_ms = {"1s": 1_000, "10s": 10_000, "5m": 300_000}[window]
    expected = to_aggregate(key, state, size_ms).model_dump_json().encode()
    assert aggregate_json(key, state, size_ms) == expected
