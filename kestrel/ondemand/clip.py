"""Short video clips for on-demand analysis: checked from their header, then sampled.

A clip is analysed as a few frames taken at ``KESTREL_CLIP_FPS`` (4 a second by
default, at most ``KESTREL_CLIP_MAX_S`` seconds of it), each re-encoded as a JPEG so a
queued clip costs its compressed frames, not their pixels. OpenCV's bundled FFmpeg
reads it (MP4/MOV, WebM/Matroska, AVI: whatever its decoders know); FFmpeg wants a
file, so the bytes go to a temporary file that is removed at once.

:func:`probe` reads only the container's header (the web server refuses a clip that is
too long or too large before anything is published); :func:`sample` decodes. Both are
called by whoever holds the bytes (the web server, the inference worker: any Kafka
producer can write a request), and both check the declared frame size before a pixel
is decoded, since a small file can declare huge frames. Both block: run them in a pool.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2

from kestrel.errors import InvalidMessage

_MAGIC: dict[str, Callable[[bytes], bool]] = {
    "mp4": lambda d: d[4:8] == b"ftyp",
    "webm": lambda d: d[:4] == b"\x1a\x45\xdf\xa3",
    "avi": lambda d: d[:4] == b"RIFF" and d[8:12] == b"AVI ",
}
JPEG_QUALITY = 90
MAX_READ_FPS = 240  # frames read a second of the limit at most, whatever timestamps say


def sniff_clip(data: bytes) -> str | None:
    """mp4, webm or avi from the file's magic bytes; None if it is none of them."""
    return next((kind for kind, test in _MAGIC.items() if test(data[:16])), None)


@dataclass(frozen=True)
class ClipInfo:
    container: str
    width: int
    height: int
    fps: float
    frames: int  # as the header declares it

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0

    def report(self) -> dict[str, float | int | str]:
        return {
            "format": self.container,
            "width": self.width,
            "height": self.height,
            "fps": round(self.fps, 3),
            "frames": self.frames,
            "duration_s": round(self.duration_s, 3),
        }


@dataclass(frozen=True)
class ClipFrame:
    index: int  # the frame's number in the clip
    t_ms: int  # its time in the clip
    jpeg: bytes


@contextmanager
def _opened(data: bytes) -> Iterator[tuple[cv2.VideoCapture, ClipInfo]]:
    if not data:
        raise InvalidMessage("empty_upload", "the upload is empty")
    container = sniff_clip(data)
    if container is None:
        raise InvalidMessage("not_a_clip", "not an MP4/MOV, WebM/Matroska or AVI file")
    handle, path = tempfile.mkstemp(prefix="kestrel-clip-", suffix=f".{container}")
    capture = None
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        if not capture.isOpened():
            raise InvalidMessage("not_a_clip", f"the {container} file does not open as a video")
        info = ClipInfo(
            container=container,
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            fps=float(capture.get(cv2.CAP_PROP_FPS) or 0.0),
            frames=max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))),
        )
        yield capture, info
    finally:
        if capture is not None:
            capture.release()
        Path(path).unlink()


def _check(info: ClipInfo, max_s: float, max_pixels: int) -> None:
    if info.width <= 0 or info.height <= 0 or not math.isfinite(info.fps) or info.fps <= 0:
        raise InvalidMessage("not_a_clip", f"the header declares no frame size or rate: {info}")
    if info.width * info.height > max_pixels:
        raise InvalidMessage(
            "image_too_large",
            f"{info.width}x{info.height} frames > the limit of {max_pixels} pixels",
        )
    if info.duration_s > max_s:
        raise InvalidMessage("clip_too_long", f"{info.duration_s:.1f} s > the limit of {max_s:g} s")


def probe(data: bytes, max_s: float, max_pixels: int) -> ClipInfo:
    """The clip's header, checked (:class:`InvalidMessage` says why it is refused)."""
    with _opened(data) as (_, info):
        _check(info, max_s, max_pixels)
        return info


def sample(data: bytes, fps: float, max_s: float, max_pixels: int) -> list[ClipFrame]:
    """The clip's frames at ``fps``: its first frame, then the first at or after each
    1/fps s, by the frames' own timestamps (phones record at a variable frame rate;
    where a container gives none, a frame's number over the header's rate).

    The header's length is checked first; reading stops at the first frame past
    ``max_s`` whatever the header said (``clip_too_long``), or past
    ``MAX_READ_FPS`` frames a second of the limit, whatever the timestamps say.
    """
    step = 1.0 / fps
    with _opened(data) as (capture, info):
        _check(info, max_s, max_pixels)
        taken: list[ClipFrame] = []
        next_t = 0.0
        index = 0
        while True:
            ok, image = capture.read()
            if not ok or image is None:
                break
            position_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
            t = position_ms / 1000 if position_ms > 0 or index == 0 else index / info.fps
            if t > max_s or index > max_s * MAX_READ_FPS:
                raise InvalidMessage(
                    "clip_too_long", f"it has frames past {max_s:g} s (its header said less)"
                )
            height, width = image.shape[:2]
            if width * height > max_pixels:
                raise InvalidMessage("image_too_large", f"a {width}x{height} frame")
            if t + 1e-9 >= next_t:
                ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if ok:
                    taken.append(ClipFrame(index, round(t * 1000), bytes(jpeg)))
                while next_t <= t + 1e-9:  # one frame per interval, even after a gap
                    next_t += step
            index += 1
        if not taken:
            raise InvalidMessage("not_a_clip", "no frame of the clip decodes")
        return taken
