"""The frame cache: frame id -> JPEG, bounded in bytes, never blocking the pipeline.

It lives in the process that shows frames (the web server), fed from
``camera.frames`` by its own consumer, so the pipeline never waits on it. Putting a
frame is a dict insert; past ``max_bytes`` the oldest frames are evicted. Each
camera's latest frame id is kept for "show me this camera now".
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedFrame:
    frame_id: str
    camera_id: str
    capture_ns: int
    jpeg: bytes


class FrameCache:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.evicted = 0
        self._frames: OrderedDict[str, CachedFrame] = OrderedDict()
        self.latest: dict[str, str] = {}

    def put(self, frame: CachedFrame) -> None:
        old = self._frames.pop(frame.frame_id, None)
        if old is not None:
            self.size -= len(old.jpeg)
        self._frames[frame.frame_id] = frame
        self.size += len(frame.jpeg)
        current = self.latest.get(frame.camera_id)
        if current is None or self._newer(frame, current):
            self.latest[frame.camera_id] = frame.frame_id
        while self.size > self.max_bytes and len(self._frames) > 1:
            _, gone = self._frames.popitem(last=False)
            self.size -= len(gone.jpeg)
            self.evicted += 1

    def _newer(self, frame: CachedFrame, current_id: str) -> bool:
        current = self._frames.get(current_id)
        return current is None or frame.capture_ns >= current.capture_ns

    def get(self, frame_id: str) -> CachedFrame | None:
        return self._frames.get(frame_id)

    def latest_frame(self, camera_id: str) -> CachedFrame | None:
        frame_id = self.latest.get(camera_id)
        return None if frame_id is None else self._frames.get(frame_id)

    def __len__(self) -> int:
        return len(self._frames)
