from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kestrel.camera.batching import AdaptiveBatchSize, ArrivalGap, FrameQueues
from kestrel.camera.frames import FrameHeaders, check_camera_id, parse_headers
from kestrel.camera.geometry import crossing, foot, inside
from kestrel.camera.synthetic import SyntheticScene
from kestrel.camera.tracker import Tracker, iou_matrix
from kestrel.errors import InvalidMessage
from tables.camera_tracks import RECENT, CameraTrack

GB = 1024**3


def test_headers_round_trip_and_bad_ones_say_which() -> None:
    headers = FrameHeaders.make("cam-1", 1_700_000_000_000_000_000, 7, 640, 480)
    assert parse_headers(headers.encode()) == headers
    assert headers.frame_id == "cam-1-1700000000000000000"
    encoded = [h for h in headers.encode() if h[0] != "kestrel.seq"]
    with pytest.raises(InvalidMessage, match=r"kestrel\.seq is missing"):
        parse_headers(encoded)
    bad = [(k, b"wide" if k == "kestrel.width" else v) for k, v in headers.encode()]
    with pytest.raises(InvalidMessage, match=r"kestrel\.width is not an integer"):
        parse_headers(bad)
    huge = [(k, b"99999" if k == "kestrel.height" else v) for k, v in headers.encode()]
    with pytest.raises(InvalidMessage, match="out of range"):
        parse_headers(huge)
    with pytest.raises(InvalidMessage, match="bad_camera_id"):
        check_camera_id("../etc")


def test_queues_drop_a_camera_s_oldest_frame_and_batches_take_the_oldest() -> None:
    queues: FrameQueues[str] = FrameQueues(per_camera=2)
    assert queues.put("a", 1.0, "a1") is None
    assert queues.put("b", 1.5, "b1") is None
    assert queues.put("a", 2.0, "a2") is None
    evicted = queues.put("a", 3.0, "a3")  # camera a is behind: its oldest goes
    assert evicted is not None and evicted.item == "a1"
    assert queues.dropped == {"a": 1}
    assert [w.item for w in queues.take(2)] == ["b1", "a2"]
    assert [w.item for w in queues.take(5)] == ["a3"]
    assert queues.oldest() is None


def test_batch_size_starts_from_device_memory_and_adapts() -> None:
    assert AdaptiveBatchSize.for_device(16 * GB, 1, 32).size == 8
    assert AdaptiveBatchSize.for_device(6 * GB, 1, 32).size == 4
    assert AdaptiveBatchSize.for_device(None, 1, 32).size == 1  # CPU
    assert AdaptiveBatchSize.for_device(16 * GB, 1, 2).size == 2  # capped
    batch = AdaptiveBatchSize(min_size=1, max_size=4, size=1)
    assert [batch.record(1, 50.0) for _ in range(3)] == [1, 1, 2]  # 3 fast batches: grow
    assert batch.record(2, 60.0) == 3
    assert batch.record(3, 900.0) == 2  # mean of last 3 (50, 60, 900) > 200: shrink
    assert batch.memory_pressure() == 1


def test_the_batcher_waits_only_for_frames_expected_within_its_delay() -> None:
    delay = 0.010
    fast, slow = ArrivalGap(cap_s=2 * delay), ArrivalGap(cap_s=2 * delay)
    assert fast.expected_by(delay)  # no rate seen yet: wait, as a plain dynamic batcher
    for i in range(20):
        fast.arrived(i * 0.008)  # 120 FPS: one every 8 ms
        slow.arrived(i * 0.076)  # 13 FPS: one every 76 ms
    assert fast.expected_by(19 * 0.008 + delay)
    assert not slow.expected_by(19 * 0.076 + delay)
    quiet = 19 * 0.076 + 3600.0
    slow.arrived(quiet)  # an hour's silence counts as the cap, not as an hour
    for i in range(1, 6):
        slow.arrived(quiet + i * 0.005)  # then 200 FPS: five frames restore the waiting
    assert slow.expected_by(quiet + 5 * 0.005 + delay)


@given(
    gaps=st.lists(
        st.floats(min_value=-1.0, max_value=1e6, allow_nan=False), min_size=1, max_size=200
    ),
    cap_s=st.floats(min_value=1e-4, max_value=10.0),
)
def test_the_arrival_gap_stays_within_the_gaps_seen_whatever_the_clock_does(
    gaps: list[float], cap_s: float
) -> None:
    arrivals, now = ArrivalGap(cap_s=cap_s), 0.0
    for gap in gaps:
        now += gap  # a clock that jumps back or far ahead must not break the estimate
        arrivals.arrived(now)
    seen = [min(max(g, 0.0), cap_s) for g in gaps[1:]]
    if not seen:
        assert arrivals.mean_s is None and arrivals.expected_by(now)
        return
    assert arrivals.mean_s is not None
    assert min(seen) - 1e-9 <= arrivals.mean_s <= max(seen) + 1e-9
    assert arrivals.expected_by(now + max(seen) + 1e-9)
    if min(seen) > 1e-6:
        assert not arrivals.expected_by(now + min(seen) / 2)


def test_geometry_zone_and_crossing_directions() -> None:
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]
    assert inside((5, 5), square) and not inside((15, 5), square)
    assert foot((0, 0, 10, 20)) == (5, 20)
    up = ((5.0, 10.0), (5.0, 0.0))  # a line drawn bottom to top
    assert crossing(*up, (2, 5), (8, 5)) == "in"  # left to right, looking along it
    assert crossing(*up, (8, 5), (2, 5)) == "out"
    assert crossing(*up, (2, 5), (4, 5)) is None
    assert crossing(*up, (2, 20), (8, 20)) is None  # passes beyond the segment's end


def test_tracker_keeps_ids_through_motion_and_a_missed_frame() -> None:
    tracker = Tracker(min_hits=2)
    ids = []
    for step in range(10):
        x = 10.0 * step
        boxes = [(x, 0.0, x + 50, 100.0), (300.0 - x, 0.0, 350.0 - x, 100.0)]
        scores = [0.9, 0.9] if step != 5 else [0.9, 0.3]  # one weak frame (partly hidden)
        if step == 6:
            boxes, scores = boxes[:1], scores[:1]  # ... then missed entirely
        tracks = tracker.match_and_update(boxes, scores, ["person"] * len(boxes))
        ids.append(sorted(t.track_id for t in tracks))
    assert ids[0] == []  # not confirmed after one frame
    assert ids[1] == [1, 2]
    assert ids[6] == [1]
    assert ids[9] == [1, 2]  # the second object keeps its id after the gap
    restored = Tracker.from_json(tracker.to_json(), min_hits=2)
    assert restored.to_json() == tracker.to_json()


def test_iou_matrix() -> None:
    import numpy as np

    a = np.array([[0, 0, 10, 10]], dtype=float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=float)
    assert iou_matrix(a, b).round(3).tolist() == [[1.0, 0.333, 0.0]]


def test_synthetic_frames_are_a_function_of_time_with_boxes_inside_the_frame() -> None:
    scene = SyntheticScene(3, actors=3)
    frame, truth = scene.render(2.5)
    again, truth_again = SyntheticScene(3, actors=3).render(2.5)
    assert (frame == again).all() and truth == truth_again
    assert frame.shape == (480, 640, 3)
    assert {t.actor_id for t in truth} <= {0, 1, 2}
    for t in truth:
        x1, y1, x2, y2 = t.box
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
    later = scene.render(3.5)[1]
    moved = {t.actor_id: t.box for t in later}
    assert any(moved.get(t.actor_id) != t.box for t in truth)  # people walk


def test_frame_cache_is_bounded_in_bytes_and_knows_each_camera_s_latest() -> None:
    from kestrel.camera.frame_cache import CachedFrame, FrameCache

    cache = FrameCache(max_bytes=250)
    for i in range(5):
        cache.put(CachedFrame(f"a-{i}", "a", i, b"x" * 100))
    assert len(cache) == 2 and cache.size == 200 and cache.evicted == 3
    assert cache.get("a-0") is None and cache.get("a-4") is not None
    cache.put(CachedFrame("b-1", "b", 1, b"y" * 10))
    latest = cache.latest_frame("a")
    assert latest is not None and latest.frame_id == "a-4"
    cache.put(CachedFrame("a-late", "a", 2, b"z"))  # an older capture arriving late
    latest = cache.latest_frame("a")
    assert latest is not None and latest.frame_id == "a-4"


def test_a_removed_camera_still_admits_the_frames_it_captured_before_its_removal() -> None:
    """Its producer removes a camera when it stops, while its last frames may still be
    on their way (seen in CI: the last frame dead-lettered as unknown_camera)."""
    import time

    from kestrel.camera.registry import CameraRegistry
    from kestrel.schemas.camera import CameraConfig
    from kestrel.settings import load_settings

    registry = CameraRegistry(load_settings(namespace="unit"))
    config = CameraConfig(camera_id="door", source="synthetic:1", fps=5)
    registry._apply(b"door", config.model_dump_json().encode())
    before = time.time_ns()
    registry._apply(b"door", None)  # the tombstone
    assert registry.get("door") is None
    assert registry.get("door", captured_ns=before) == config
    assert registry.get("door", captured_ns=time.time_ns() + 1) is None  # after: refused
    assert registry.get("nobody", captured_ns=before) is None


def test_every_frame_gets_one_record_whatever_order_its_detections_come_in() -> None:
    """Drops reported late and frames detected out of order get a record; duplicates none."""
    state = CameraTrack()
    verdicts = []
    # capture times (ms): 5 tracked, 3 dropped but reported after 5, 4 detected after 5,
    # then the inference group's replay after a crash sends 3, 4 and 5 again.
    for capture, dropped in [
        (1, False),
        (5, False),
        (3, True),
        (4, False),
        (3, True),
        (4, False),
        (5, False),
        (6, False),
    ]:
        verdict = state.verdict(capture, dropped)
        verdicts.append(verdict)
        if verdict == "track":
            state.applied(capture)
        elif verdict != "duplicate":
            state.recorded(capture)
    assert verdicts == [
        "track",
        "track",
        "dropped",
        "out_of_order",
        "duplicate",
        "duplicate",
        "duplicate",
        "track",
    ]


def test_a_camera_remembers_a_bounded_number_of_records_and_old_states_still_load() -> None:
    state = CameraTrack()
    for capture in range(1, RECENT + 50):
        state.applied(capture)
    assert len(state.recent) == RECENT and state.verdict(10, False) == "duplicate"
    again = CameraTrack.from_json(state.to_json())
    assert (again.recent, again.floor_ns, again.last_ns) == (
        state.recent,
        state.floor_ns,
        state.last_ns,
    )
    # A record written before ``recent``: every frame up to last_ns had been handled.
    legacy = CameraTrack.from_json(
        orjson.dumps({"tracker": {}, "lines": {}, "labels": [], "last_ns": 100, "drops": [120]})
    )
    assert legacy.verdict(90, False) == "duplicate" and legacy.verdict(120, True) == "duplicate"
    assert legacy.verdict(130, True) == "dropped"
