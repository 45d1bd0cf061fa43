"""State keyed by names a producer or a client chooses stays bounded (issue: web abuse).

Each structure here grows with hostile input unless capped: window state per source
and field, the rate limiter's counters, the inference worker's unknown camera ids,
the UX merger's slots.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kestrel.camera.registry import UnknownCameras
from kestrel.ratelimit import OTHER, REFUSED_KEYS, SourceRateLimiter
from tables.windows import PartitionWindows, SampleBatch, default_specs
from web.ux import MAX_SLOTS, UxMerger

SPECS = default_specs(1_000)


def batch(source: str, fields: list[str], t: int = 1_000) -> SampleBatch:
    return SampleBatch(
        source,
        np.array([t], dtype=np.int64),
        {name: np.array([1.0]) for name in fields},
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([f"s{i}" for i in range(8)]),
            st.lists(st.sampled_from([f"f{i}" for i in range(12)]), min_size=1, max_size=6),
        ),
        max_size=60,
    ),
    st.integers(1, 5),
    st.integers(1, 8),
)
def test_windows_never_hold_more_sources_or_fields_than_their_caps(
    messages: list[tuple[str, list[str]]], max_sources: int, max_fields: int
) -> None:
    windows = PartitionWindows(0, SPECS)
    for source, fields in messages:
        message = batch(source, sorted(set(fields)))
        if windows.over_capacity(message, max_sources, max_fields) is None:
            windows.apply(message)
    assert len(windows.sources) <= max_sources
    for states in windows.sources.values():
        fields_held = set().union(*states.values())
        assert len(fields_held) <= max_fields


def test_the_refusal_says_which_cap_and_a_closed_source_frees_its_place() -> None:
    windows = PartitionWindows(0, SPECS)
    windows.apply(batch("a", ["x"]))
    assert windows.over_capacity(batch("b", ["x"]), 1, 4) == (
        "too_many_sources: 1 have open windows here"
    )
    assert (windows.over_capacity(batch("a", ["x", "y"]), 1, 1) or "").startswith("too_many_fields")
    assert windows.over_capacity(batch("a", ["x"]), 1, 1) is None  # a known field fits
    windows.apply(batch("b", ["x"], t=10_000_000))  # (under a cap of 2) time moves on
    assert windows.over_capacity(batch("c", ["x"]), 2, 4) is not None
    windows.close_due()  # every window of a closed: a holds no state, c takes its place
    assert list(windows.sources) == ["b"]
    assert windows.over_capacity(batch("c", ["x"]), 2, 4) is None


def test_the_limiter_counts_refusals_of_at_most_a_hundred_sources_by_name() -> None:
    limiter = SourceRateLimiter(max_hz=1)
    for i in range(5 * REFUSED_KEYS):
        assert not limiter.admit(f"hostile-{i}", [1_000, 1_001])  # 2 in one second > 1
    assert len(limiter.refused) == REFUSED_KEYS + 1
    assert limiter.refused[OTHER] == 2 * 4 * REFUSED_KEYS
    assert limiter.counts("hostile-0") == {}  # a refused source leaves no counters behind
    assert sum(limiter.refused.values()) == 2 * 5 * REFUSED_KEYS


def test_unknown_camera_ids_are_remembered_in_bounded_memory() -> None:
    unknown = UnknownCameras(memory_s=10.0, max_ids=100)
    for i in range(1_000):
        unknown.remember(f"cam-{i}", now=float(i) / 1000)
    assert len(unknown) == 100
    assert unknown.refuses("cam-999", now=1.0)  # the newest are kept
    assert not unknown.refuses("cam-0", now=1.0)  # the oldest went first
    assert not unknown.refuses("cam-999", now=20.0)  # and every one expires
    unknown.remember("late", now=100.0)  # expired ones go before fresh ones
    assert len(unknown) == 1


def test_the_ux_merger_holds_at_most_its_slots_whatever_pages_send() -> None:
    merger = UxMerger(None)
    timestamps = list(range(0, 10 * MAX_SLOTS * 17, 17))  # one sample in each slot
    merger.add(timestamps, {"frame_time_ms": [16.0] * len(timestamps)})
    assert len(merger.slots) == MAX_SLOTS
    assert merger.refused == len(timestamps) - MAX_SLOTS


def test_the_analytics_worker_holds_at_most_its_sources_and_frees_only_idle_ones() -> None:
    from agents.analytics import IDLE_MS, AnalyticsPartition  # the Faust app, no broker
    from kestrel.analytics.config import AnalyticsConfig

    part = AnalyticsPartition(AnalyticsConfig(), max_sources=2)
    for name in ("a", "b"):
        assert part.make_room(name, 0)
        part.last_ms[name] = 0
    assert not part.make_room("c", IDLE_MS - 1)  # nobody idle long enough: c is skipped
    part.last_ms["b"] = 5_000  # b spoke since
    assert part.make_room("c", IDLE_MS)  # a, idle the longest, gives its place up
    assert "a" not in part.last_ms and part.evicted == {"a"}
    part.last_ms["c"] = IDLE_MS
    assert (b"a", None) in part.changes()  # a tombstone: a restore forgets it too
    assert len(part.last_ms) == 2
    part.engine.tracker.active["x|b|f"] = {"source": "b"}  # b has an active alert
    part.last_ms["c"] = 9 * IDLE_MS + 1  # c spoke recently
    assert not part.make_room("d", 10 * IDLE_MS)  # b, idle, must end its alert first
    del part.engine.tracker.active["x|b|f"]
    assert part.make_room("d", 10 * IDLE_MS) and "b" in part.evicted
