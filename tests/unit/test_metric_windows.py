"""Keys and published form of the persisted window state, without a broker."""

from __future__ import annotations

import numpy as np

from tables.metric_windows import (
    marker_key,
    parse_state_key,
    state_key,
    to_aggregate,
)
from tables.windows import WindowKey, WindowState


def test_state_keys_round_trip_and_start_with_their_partition() -> None:
    key = WindowKey("model:llama7b", "ttft_ms", "10s", 1_700_000_000_000)
    raw = state_key(3, key)
    assert raw == "3|10s|1700000000000|model:llama7b|ttft_ms"
    assert parse_state_key(raw) == key
    assert parse_state_key(marker_key(3, "metrics.model")) is None
    assert marker_key(11, "metrics.ui").startswith("11|")


def test_a_closed_window_is_published_with_every_statistic() -> None:
    state = WindowState()
    state.add(np.array([4.0, 1.0, 2.0]), np.array([10, 30, 20], dtype=np.int64))
    aggregate = to_aggregate(WindowKey("ui", "frame_time_ms", "1s", 5_000), state, 1_000)
    assert aggregate.key == "ui|frame_time_ms|1s|5000"
    assert (aggregate.window_start_ms, aggregate.window_end_ms) == (5_000, 6_000)
    assert (aggregate.count, aggregate.sum, aggregate.mean) == (3, 7.0, 7.0 / 3)
    assert (aggregate.min, aggregate.max, aggregate.last) == (1.0, 4.0, 1.0)
    assert aggregate.p50 is not None and abs(aggregate.p50 - 2.0) <= 0.02
