"""On-demand analysis without a broker: lanes, a request's run, the desk, compression."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kestrel.errors import InvalidMessage
from kestrel.ondemand.compress import compress, declared_size, decode_image, sniff
from kestrel.ondemand.desk import RequestDesk
from kestrel.ondemand.lanes import AHEAD_OF_CAMERAS, LANE_ORDER, Lane, LaneFull, LaneQueues
from kestrel.ondemand.pressure import Level, Limits, MemoryPressure
from kestrel.schemas.analysis import (
    AnalysisEvent,
    AnalysisRequest,
    AnyEvent,
    Finding,
    is_final,
)
from kestrel.schemas.camera import CameraConfig, Detection, Zone

lanes = st.sampled_from(LANE_ORDER)
deadlines = st.one_of(st.none(), st.integers(min_value=0, max_value=10**13))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(lanes, deadlines), max_size=60), st.integers(0, 70))
def test_items_leave_by_lane_then_deadline_and_a_full_lane_refuses_whole_requests(
    puts: list[tuple[Lane, int | None]], n: int
) -> None:
    queues: LaneQueues[int] = LaneQueues(capacity={lane: 5 for lane in LANE_ORDER})
    held: list[tuple[Lane, int | None, int]] = []
    for i, (lane, deadline) in enumerate(puts):
        before = queues.waiting((lane,))
        try:
            queues.put_all(lane, f"r{i}", deadline, [i])
        except LaneFull:
            assert before == 5  # refused only when full, and nothing of it was queued
            assert queues.waiting((lane,)) == 5
        else:
            held.append((lane, deadline, i))
    taken = queues.take(n)
    assert len(taken) == min(n, len(held))
    order = [(q.lane.rank, float("inf") if q.deadline_ms is None else q.deadline_ms) for q in taken]
    assert order == sorted(order)  # lane first, then earliest deadline
    if taken:  # nothing left behind that should have gone first
        last = order[-1]
        for q in (q for heap in queues.heaps.values() for q in heap):
            due = float("inf") if q.deadline_ms is None else q.deadline_ms
            assert (q.lane.rank, due) >= last


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(lanes, deadlines), max_size=40), st.integers(0, 10**13))
def test_overdue_takes_exactly_the_items_past_their_deadline(
    puts: list[tuple[Lane, int | None]], now: int
) -> None:
    queues: LaneQueues[int] = LaneQueues()
    for i, (lane, deadline) in enumerate(puts):
        queues.put_all(lane, f"r{i}", deadline, [i])
    late = queues.overdue(now)
    assert all(q.deadline_ms is not None and q.deadline_ms < now for q in late)
    left = [q for heap in queues.heaps.values() for q in heap]
    assert all(q.deadline_ms is None or q.deadline_ms >= now for q in left)
    assert len(late) + len(left) == len(puts)


def test_a_flood_of_low_requests_never_goes_before_a_deadline_lane() -> None:
    queues: LaneQueues[str] = LaneQueues()
    for i in range(500):
        queues.put_all(Lane.LOW, f"low{i}", None, ["low"])
    queues.put_all(Lane.URGENT, "u", 10, ["urgent"])
    assert [q.item for q in queues.take(1, AHEAD_OF_CAMERAS)] == ["urgent"]
    assert queues.take(4, AHEAD_OF_CAMERAS) == []
    with pytest.raises(LaneFull, match="low lane holds 500 of its 512"):
        queues.put_all(Lane.LOW, "more", None, ["x"] * 13)


def request(**fields: Any) -> AnalysisRequest:
    values: dict[str, Any] = {
        "request_id": "req-1",
        "priority": "urgent",
        "submitted_ms": 1_000,
        "image": base64.b64encode(b"not decoded here"),
        **fields,
    }
    return AnalysisRequest.model_validate(values)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[AnyEvent, Any]] = []
        self.acked: list[Any] = []

    def emit(self, event: AnyEvent, ack: Any) -> None:
        # What a consumer parses: the event's JSON against its schema.
        parsed = AnalysisEvent.model_validate_json(event.model_dump_json()).root
        self.events.append((parsed, ack))

    def types(self) -> list[str]:
        return [e.type for e, _ in self.events]


class Clock:
    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def desk_with(recorder: Recorder, clock: Clock | None = None) -> RequestDesk:
    return RequestDesk(recorder.emit, recorder.acked.append, clock_ms=clock or Clock(1_100))


def test_an_image_runs_through_its_phases_with_numbered_events_and_one_final_ack() -> None:
    recorder = Recorder()
    desk = desk_with(recorder)
    camera = CameraConfig(
        camera_id="door",
        source="synthetic:1",
        fps=5,
        zones=[Zone(name="left", polygon=[[0, 0], [50, 0], [50, 100], [0, 100]])],
    )
    desk.admit(request(events_before=3, max_items=2), Lane.URGENT, "record")
    [queued] = desk.lanes.take(4)
    desk.started([queued], batch_size=3, rss_mb=120.0)
    found = [
        Detection(label="person", score=0.9, box=[10, 10, 40, 90]),
        Detection(label="person", score=0.3, box=[60, 10, 90, 90]),  # below the threshold
        Detection(label="person", score=0.7, box=[60, 10, 90, 90]),
        Detection(label="dog", score=0.5, box=[0, 0, 5, 5]),  # past max_items
    ]
    desk.finish(queued.item, found, (100, 100), camera, 0.4, "ssd")

    events = [e for e, _ in recorder.events]
    assert [e.seq for e in events] == list(range(3, 3 + len(events)))
    assert recorder.types() == [
        "stream_update",  # queued
        "stream_update",  # image analysis starts
        "stream_update",  # detected
        "stream_update",  # context
        "stream_update",  # context done
        "stream_update",  # generation
        "token",
        "token",
        "stream_update",  # validation
        "complete",
    ]
    progress = [e.payload.progress for e in events if e.type == "stream_update"]
    assert progress == sorted(progress) and progress[-1] == 80.0
    tokens = [e.payload.data for e in events if e.type == "token"]
    assert all(isinstance(t, Finding) for t in tokens)
    assert [(t.position, t.zones, t.score) for t in tokens if isinstance(t, Finding)] == [
        (0, ["left"], 0.9),
        (1, [], 0.7),
    ]
    final = events[-1]
    assert final.type == "complete" and is_final(final)
    assert final.payload.result.counts == {"person": 2}
    assert final.payload.result.zones == {"left": {"person": 1}}
    assert final.payload.summary.total_tokens == 2
    assert final.payload.summary.most_common_batch_size == 3
    assert final.payload.summary.max_memory_usage_mb == 120.0
    # Only the last event carries the record to ack.
    assert [ack for _, ack in recorder.events] == [None] * (len(events) - 1) + ["record"]
    assert desk.active == {}


def test_a_cancel_ends_a_queued_request_at_once_and_a_running_one_at_its_next_item() -> None:
    recorder = Recorder()
    desk = desk_with(recorder)
    desk.admit(request(request_id="queued"), Lane.URGENT, "a")
    desk.admit(request(request_id="running"), Lane.URGENT, "b")
    desk.cancel("queued", "changed my mind")
    assert recorder.events[-1][0].type == "cancelled" and recorder.events[-1][1] == "a"
    [running] = desk.lanes.take(4)
    desk.started([running], 1, 0.0)
    desk.cancel("running", "too slow")
    found = [Detection(label="person", score=0.9, box=[1, 1, 2, 2])]
    desk.finish(running.item, found, (10, 10), None, 0.4, "ssd")
    last, ack = recorder.events[-1]
    assert last.type == "cancelled" and ack == "b"
    assert last.payload.phase == "image_analysis" and last.payload.reason == "too slow"
    assert "token" not in recorder.types()
    # A cancel that comes before its request ends the request when it comes.
    desk.cancel("early", "before it came")
    desk.admit(request(request_id="early"), Lane.URGENT, "c")
    assert recorder.events[-1][0].type == "cancelled" and recorder.events[-1][1] == "c"


def test_deadlines_lane_checks_and_duplicates_end_requests_with_a_clear_error() -> None:
    recorder = Recorder()
    clock = Clock(3_001)
    desk = desk_with(recorder, clock)
    desk.admit(request(request_id="late"), Lane.URGENT, "late")  # 2 s after
    clock.now_ms = 1_100
    desk.admit(request(request_id="wrong"), Lane.LOW, "wrong")
    desk.admit(request(request_id="queued"), Lane.URGENT, "q")
    desk.admit(request(request_id="queued"), Lane.URGENT, "copy")
    clock.now_ms = 3_500
    desk.expire()
    errors = {e.request_id: e.payload for e, _ in recorder.events if e.type == "error"}
    assert errors["late"].code == "deadline_exceeded" and not errors["late"].recoverable
    assert errors["wrong"].code == "bad_request" and "low lane" in errors["wrong"].message
    assert errors["queued"].code == "deadline_exceeded"
    assert recorder.acked == ["copy"]  # the copy ran nothing and said nothing
    assert desk.lanes.waiting() == 0 and desk.active == {}
    low = request(request_id="bg", priority="low")
    assert low.due_ms() is None  # low has no deadline unless one is given


def test_the_cancel_memory_is_bounded() -> None:
    desk = desk_with(Recorder())
    for i in range(10_050):
        desk.cancel(f"id{i}", "x")
    assert len(desk.cancelled) == 10_000 and "id10049" in desk.cancelled


def photo(size: int = 256) -> np.ndarray[Any, np.dtype[np.uint8]]:
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_quality_search_finds_the_highest_quality_under_the_target(fmt: str) -> None:
    image = photo()
    png = bytes(cv2.imencode(".png", image)[1])
    target = 40_000
    out = compress(png, image, target, floor=30, fmt=fmt)  # type: ignore[arg-type]
    assert out.target_met and out.compressed_bytes <= target and sniff(out.data) == fmt
    assert out.quality is not None and 30 <= out.quality <= 95
    if out.quality < 95:  # one step up would not have fitted
        ext = ".jpg" if fmt == "jpeg" else ".webp"
        flag = cv2.IMWRITE_JPEG_QUALITY if fmt == "jpeg" else cv2.IMWRITE_WEBP_QUALITY
        above = cv2.imencode(ext, image, [flag, out.quality + 1])[1]
        assert len(above) > target
    assert out.ratio == pytest.approx(len(png) / out.compressed_bytes)
    assert out.encodings <= 7


def test_a_target_below_the_floor_keeps_the_floor_and_says_so() -> None:
    image = photo()
    out = compress(b"x", image, target_bytes=100, floor=40)
    assert not out.target_met and out.quality == 40


def test_a_small_jpeg_is_kept_as_it_came() -> None:
    image = photo(32)
    jpeg = bytes(cv2.imencode(".jpg", image)[1])
    out = compress(jpeg, image, target_bytes=1_000_000, floor=40)
    assert out.data == jpeg and out.quality is None and out.encodings == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2_000))
def test_any_bytes_either_decode_as_an_image_or_are_refused_clearly(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=10_000_000)
    except InvalidMessage as exc:
        assert exc.reason in {"empty_upload", "not_an_image", "image_too_large"}
    else:
        assert image.ndim == 3


def test_memory_pressure_rises_through_its_levels_and_counts_each_step() -> None:
    pressure = MemoryPressure(Limits.for_budget(1_000))
    assert pressure.observe(100, 50) is Level.NORMAL
    assert pressure.observe(650, 50) is Level.WARNING and pressure.counts["warnings"] == 1
    assert pressure.observe(100, 91) is Level.PRESSURE and pressure.shrink_batches
    assert not pressure.shed_low
    assert pressure.observe(1_000, 10) is Level.EXTREME and pressure.shed_low
    assert pressure.observe(100, 10) is Level.NORMAL and not pressure.shrink_batches
    assert pressure.observe(100, 85) is Level.WARNING and pressure.counts["warnings"] == 2


def test_extreme_pressure_sheds_the_low_lane_and_refuses_low_requests_only() -> None:
    recorder = Recorder()
    desk = desk_with(recorder)
    for i in range(3):
        desk.admit(request(request_id=f"low{i}", priority="low"), Lane.LOW, f"l{i}")
    desk.admit(request(request_id="urgent"), Lane.URGENT, "u")
    assert desk.shed_low() == 3
    desk.refuse_low = True
    desk.admit(request(request_id="late-low", priority="low"), Lane.LOW, "x")
    desk.admit(request(request_id="urgent2"), Lane.URGENT, "u2")
    codes = {e.request_id: e.payload.code for e, _ in recorder.events if e.type == "error"}
    assert codes == {f"low{i}": "memory_pressure" for i in range(3)} | {
        "late-low": "memory_pressure"
    }
    assert [q.request_id for q in desk.lanes.take(10)] == ["urgent", "urgent2"]


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG file whose header declares ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_refused_from_its_header_before_any_pixel_is_decoded() -> None:
    under_pillows_limit = png_declaring(10_000, 10_000)  # 300 MB of pixels in 68 bytes
    assert len(under_pillows_limit) < 100
    assert declared_size(under_pillows_limit) == (10_000, 10_000)
    with pytest.raises(InvalidMessage, match="10000x10000 pixels") as refused:
        decode_image(under_pillows_limit, max_pixels=40_000_000)
    assert refused.value.reason == "image_too_large"
    with pytest.raises(InvalidMessage, match="pixels") as refused:  # 30 GB of pixels
        decode_image(png_declaring(100_000, 100_000), max_pixels=40_000_000)
    assert refused.value.reason == "image_too_large"
