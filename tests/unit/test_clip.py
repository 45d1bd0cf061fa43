"""Clips without a broker: sampling, refusals, the tracker pass and the desk's clip runs."""

from __future__ import annotations

import base64
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kestrel.errors import InvalidMessage
from kestrel.ondemand.clip import ClipFrame, probe, sample, sniff_clip
from kestrel.ondemand.desk import RequestDesk
from kestrel.ondemand.lanes import Lane
from kestrel.ondemand.tracks import follow
from kestrel.schemas.analysis import (
    AnalysisEvent,
    AnalysisRequest,
    AnyEvent,
    Cancelled,
    FrameResult,
)
from kestrel.schemas.camera import CameraConfig, Detection, Zone

PIXELS = 40_000_000


def make_clip(frames: int, fps: float = 10.0, fourcc: str = "MJPG", ext: str = ".avi") -> bytes:
    """A clip of a white bar moving right, 8 px a frame, written by OpenCV's FFmpeg."""
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / f"clip{ext}")
        writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*fourcc), fps, (160, 120))
        assert writer.isOpened()
        for i in range(frames):
            image = np.zeros((120, 160, 3), np.uint8)
            image[40:80, 8 * i : 8 * i + 20] = 255
            writer.write(image)
        writer.release()
        return Path(path).read_bytes()


@pytest.mark.parametrize(
    ("fourcc", "ext", "kind"), [("MJPG", ".avi", "avi"), ("mp4v", ".mp4", "mp4")]
)
def test_a_clip_is_sampled_at_the_asked_rate_in_order(fourcc: str, ext: str, kind: str) -> None:
    data = make_clip(15, fps=10.0, fourcc=fourcc, ext=ext)
    assert sniff_clip(data) == kind
    info = probe(data, max_s=10, max_pixels=PIXELS)
    assert (info.width, info.height, info.frames, info.fps) == (160, 120, 15, 10.0)
    frames = sample(data, fps=4.0, max_s=10, max_pixels=PIXELS)
    # 1.5 s at 4 a second: t = 0, 0.25 (frame 3 at 0.3 s), 0.5, 0.75 (0.8), 1.0, 1.25 (1.3)
    assert [f.index for f in frames] == [0, 3, 5, 8, 10, 13]
    assert [f.t_ms for f in frames] == [0, 300, 500, 800, 1000, 1300]
    first = cv2.imdecode(np.frombuffer(frames[1].jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert first is not None
    assert first[60, 24 + 10] > 200 and first[60, 5] < 50  # the bar moved to x = 24..44


def test_an_h264_mp4_as_phones_record_it_is_sampled(tmp_path: Path) -> None:
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(45):  # 1.5 s at 30 FPS
            image = np.zeros((240, 320, 3), np.uint8)
            image[60:180, 5 * i : 5 * i + 40] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = path.read_bytes()
    info = probe(data, max_s=10, max_pixels=PIXELS)
    assert (info.container, info.width, info.height, info.fps, info.frames) == (
        "mp4",
        320,
        240,
        30.0,
        45,
    )
    frames = sample(data, fps=4.0, max_s=10, max_pixels=PIXELS)
    assert [f.index for f in frames] == [0, 8, 15, 23, 30, 38]


def test_a_variable_frame_rate_clip_is_sampled_by_its_frames_timestamps(tmp_path: Path) -> None:
    """Frames at 0, 0.1, 0.15, 1.0, 1.05, 1.1 and 2.0 s (a phone pausing, then catching up)."""
    path = tmp_path / "vfr.mp4"
    stamps_ms = [0, 100, 150, 1000, 1050, 1100, 2000]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        for i, ms in enumerate(stamps_ms):
            image = np.full((120, 160, 3), 20 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    frames = sample(path.read_bytes(), fps=4.0, max_s=10, max_pixels=PIXELS)
    assert [(f.index, f.t_ms) for f in frames] == [(0, 0), (3, 1000), (6, 2000)]
    with pytest.raises(InvalidMessage) as long:  # by its timestamps, whatever its header
        sample(path.read_bytes(), fps=4.0, max_s=1.5, max_pixels=PIXELS)
    assert long.value.reason == "clip_too_long"


def test_a_clip_too_long_or_too_large_is_refused_from_its_header() -> None:
    data = make_clip(30, fps=10.0)
    with pytest.raises(InvalidMessage, match=r"3\.0 s > the limit of 2 s") as long:
        probe(data, max_s=2, max_pixels=PIXELS)
    assert long.value.reason == "clip_too_long"
    with pytest.raises(InvalidMessage) as large:
        sample(data, fps=4.0, max_s=10, max_pixels=160 * 119)
    assert large.value.reason == "image_too_large"
    for bad, reason in [(b"", "empty_upload"), (b"\xff\xd8\xff" + b"0" * 100, "not_a_clip")]:
        with pytest.raises(InvalidMessage) as refused:
            probe(bad, max_s=10, max_pixels=PIXELS)
        assert refused.value.reason == reason


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([b"", b"\x00\x00\x00\x18ftypisom", b"\x1a\x45\xdf\xa3", b"RIFF\0\0\0\0AVI "]),
    st.binary(max_size=3000),
)
def test_any_bytes_are_a_clip_or_refused_clearly(magic: bytes, rest: bytes) -> None:
    try:
        frames = sample(magic + rest, fps=4.0, max_s=2, max_pixels=PIXELS)
    except InvalidMessage as exc:
        assert exc.reason in {"empty_upload", "not_a_clip", "clip_too_long", "image_too_large"}
    else:
        assert frames and all(f.jpeg[:3] == b"\xff\xd8\xff" for f in frames)


def moving(i: int) -> list[Detection]:
    """A person walking right; a car that shows up in frames 2 and 3 only."""
    found = [Detection(label="person", score=0.9, box=[10.0 * i, 10, 10.0 * i + 30, 90])]
    if i in (2, 3):
        found.append(Detection(label="car", score=0.8, box=[100, 50, 150, 90]))
    found.append(Detection(label="dog", score=0.1, box=[0, 0, 5, 5]))  # below the threshold
    return found


def test_the_tracker_keeps_one_id_per_object_across_the_clip() -> None:
    camera = CameraConfig(
        camera_id="door",
        source="synthetic:1",
        fps=5,
        zones=[Zone(name="right", polygon=[[40, 0], [200, 0], [200, 200], [40, 200]])],
    )
    frames = [(3 * i, 300 * i, moving(i)) for i in range(5)]
    results, tracks = follow(frames, camera, 0.4, None)
    ids = [[(f.label, f.track_id) for f in r.findings] for r in results]
    assert ids[0] == [("person", 1)] and ids[4] == [("person", 1)]
    assert ("car", 2) in ids[2] and ("car", 2) in ids[3]
    summary = {t.track_id: t for t in tracks}
    assert (summary[1].first_ms, summary[1].last_ms, summary[1].frames) == (0, 1200, 5)
    assert summary[1].zones == ["right"]  # it walked into the zone at frame 4
    assert (summary[2].label, summary[2].frames, summary[2].first_ms) == ("car", 2, 600)


class Recorder:
    def __init__(self) -> None:
        self.events: list[AnyEvent] = []
        self.acks: list[Any] = []

    def emit(self, event: AnyEvent, ack: Any) -> None:
        self.events.append(AnalysisEvent.model_validate_json(event.model_dump_json()).root)
        if ack is not None:
            self.acks.append(ack)


def clip_request(request_id: str = "clip-1", **fields: Any) -> AnalysisRequest:
    return AnalysisRequest.model_validate(
        {
            "request_id": request_id,
            "priority": "normal",
            "submitted_ms": 1_000,
            "clip": base64.b64encode(b"sampled already"),
            **fields,
        }
    )


def clip_frames(n: int) -> list[ClipFrame]:
    return [ClipFrame(3 * i, 300 * i, b"\xff\xd8\xff") for i in range(n)]


def test_a_clip_runs_frame_by_frame_then_tracks_and_sends_one_token_per_frame() -> None:
    recorder = Recorder()
    desk = RequestDesk(recorder.emit, recorder.acks.append, clock_ms=lambda: 1_100)
    desk.admit(clip_request(), Lane.NORMAL, "record", frames=clip_frames(5))
    assert desk.lanes.waiting() == 5
    done = 0
    while desk.lanes.waiting():
        batch = desk.lanes.take(2)
        desk.started(batch, len(batch), 100.0)
        for queued in batch:
            desk.finish(queued.item, moving(done), (160, 120), None, 0.4, "ssd")
            done += 1
    events = recorder.events
    assert [e.seq for e in events] == list(range(len(events)))
    updates = [(e.payload.phase, e.payload.progress) for e in events if e.type == "stream_update"]
    assert updates[:7] == [
        ("queued", 0.0),
        ("image_analysis", 0.0),
        ("image_analysis", 6.0),
        ("image_analysis", 12.0),
        ("image_analysis", 18.0),
        ("image_analysis", 24.0),
        ("image_analysis", 30.0),
    ]
    assert [p for _, p in updates] == sorted(p for _, p in updates)
    tokens = [e.payload.data for e in events if e.type == "token"]
    assert [t.position for t in tokens] == [0, 1, 2, 3, 4]
    assert all(isinstance(t, FrameResult) for t in tokens)
    final = events[-1]
    assert final.type == "complete" and recorder.acks == ["record"]
    result = final.payload.result
    assert result.media == "clip" and len(result.frames) == 5
    assert result.counts == {"person": 1, "car": 1}  # distinct tracks, not detections
    assert final.payload.summary.total_tokens == 5
    assert desk.active == {}


def test_a_cancel_mid_clip_ends_it_once_and_its_queued_frames_leave() -> None:
    recorder = Recorder()
    desk = RequestDesk(recorder.emit, recorder.acks.append, clock_ms=lambda: 1_100)
    desk.admit(clip_request(), Lane.NORMAL, "record", frames=clip_frames(6))
    batch = desk.lanes.take(2)
    desk.started(batch, 2, 0.0)
    desk.finish(batch[0].item, moving(0), (160, 120), None, 0.4, "ssd")
    desk.cancel("clip-1", "seen enough")
    assert desk.lanes.waiting() == 0
    desk.finish(batch[1].item, moving(1), (160, 120), None, 0.4, "ssd")  # was in the batch
    finals = [e for e in recorder.events if e.type in ("cancelled", "complete", "error")]
    assert [e.type for e in finals] == ["cancelled"]
    assert isinstance(finals[0].payload, Cancelled) and finals[0].payload.phase == "image_analysis"
    assert recorder.acks == ["record"]
    assert "token" not in [e.type for e in recorder.events]


def test_a_clip_past_its_deadline_or_refused_ends_once_with_its_reason() -> None:
    recorder = Recorder()
    now = [1_100]
    desk = RequestDesk(recorder.emit, recorder.acks.append, clock_ms=lambda: now[0])
    desk.admit(clip_request("late"), Lane.NORMAL, "late", frames=clip_frames(4))
    refused = InvalidMessage("clip_too_long", "12.0 s > the limit of 10 s")
    desk.admit(clip_request("long"), Lane.NORMAL, "long", refused=refused)
    now[0] = 11_001  # normal: 10 s after submission
    desk.expire()
    errors = {e.request_id: e.payload for e in recorder.events if e.type == "error"}
    assert errors["late"].code == "deadline_exceeded"
    assert errors["long"].code == "clip_too_long" and "12.0 s" in errors["long"].message
    assert sorted(recorder.acks) == ["late", "long"] and desk.lanes.waiting() == 0


def test_a_request_gives_exactly_one_of_image_and_clip() -> None:
    with pytest.raises(ValueError, match="exactly one of image and clip"):
        clip_request(image=base64.b64encode(b"x"))
    with pytest.raises(ValueError, match="exactly one of image and clip"):
        clip_request(clip=None)
