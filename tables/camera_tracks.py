"""The tracking stage's state: each camera's tracker, line totals and progress.

Task ``p`` of the tracking stage (:mod:`kestrel.state`) owns partition ``p`` of
``camera.detections``, keyed by camera id, so every frame of a camera reaches one
task, in order. Its changelog holds one record per camera (key: the camera id):

* ``tracker``: the tracker's tracks (:meth:`kestrel.camera.tracker.Tracker.to_json`);
* ``lines`` and ``labels``: line-crossing totals, the classes seen so far;
* ``last_ns``: the capture time of the last frame applied to the tracker;
* ``recent``: capture times of the last ``RECENT`` frames that got a record, and
  ``floor_ns``: frames at or before it that are not in ``recent`` count as handled.

Each frame gets exactly one record on ``camera.results``. A frame already handled is
an upstream duplicate (the inference group writes at least once and replays after a
crash): counted, nothing sent. A frame that is not, but was captured at or before
``last_ns``, came out of order (the inference group reports a dropped frame when it
drops it, after newer frames' detections, and after a broker outage has detected
older frames after newer ones): the tracker cannot go back in time, so it gets a
``frame_dropped`` record (``out_of_order``), as a drop reported late gets its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from kestrel.state import Restored

#: Frames per camera whose records are remembered one by one (at 30 FPS, 8.5 s: more
#: than the inference group replays after a crash, which is since its last commit).
RECENT = 256
Verdict = Literal["duplicate", "dropped", "out_of_order", "track"]


@dataclass
class CameraTrack:
    """One camera's state, as stored."""

    tracker: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, dict[str, int]] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    last_ns: int = -1
    recent: list[int] = field(default_factory=list)
    floor_ns: int = -1

    def handled(self, capture_ns: int) -> bool:
        """Has a record for this frame already gone out?"""
        return capture_ns <= self.floor_ns or capture_ns in self.recent

    def verdict(self, capture_ns: int, dropped: bool) -> Verdict:
        """What the frame's detections call for: see the module docstring."""
        if self.handled(capture_ns):
            return "duplicate"
        if dropped:
            return "dropped"
        if capture_ns <= self.last_ns:
            return "out_of_order"
        return "track"

    def recorded(self, capture_ns: int) -> None:
        """A record for this frame went out (a result or a drop)."""
        self.recent.append(capture_ns)
        if len(self.recent) > RECENT:
            self.floor_ns = max(self.floor_ns, self.recent.pop(0))

    def applied(self, capture_ns: int) -> None:
        """The frame went through the tracker, and its result out."""
        self.last_ns = capture_ns
        self.recorded(capture_ns)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "tracker": self.tracker,
                "lines": self.lines,
                "labels": self.labels,
                "last_ns": self.last_ns,
                "recent": self.recent,
                "floor_ns": self.floor_ns,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> CameraTrack:
        data = orjson.loads(raw)
        return cls(
            tracker=data["tracker"],
            lines=data["lines"],
            labels=data["labels"],
            last_ns=int(data["last_ns"]),
            # A record from before ``recent``: every frame up to last_ns was handled.
            recent=[int(d) for d in data.get("recent", data.get("drops", []))],
            floor_ns=int(data.get("floor_ns", data["last_ns"])),
        )


class CameraTracks:
    """The cameras of one partition, and which changed since the last commit."""

    def __init__(self, cameras: dict[str, CameraTrack] | None = None) -> None:
        self.cameras = cameras or {}
        self.dirty: set[str] = set()

    def get(self, camera_id: str) -> CameraTrack:
        found = self.cameras.get(camera_id)
        if found is None:
            found = self.cameras[camera_id] = CameraTrack()
        return found

    def put(self, camera_id: str, track: CameraTrack) -> None:
        self.cameras[camera_id] = track
        self.dirty.add(camera_id)

    def changes(self) -> Iterator[tuple[bytes, bytes | None]]:
        for camera_id in sorted(self.dirty):
            yield camera_id.encode(), self.cameras[camera_id].to_json()
        self.dirty.clear()

    @classmethod
    def restore(cls, restored: Restored) -> CameraTracks:
        return cls(
            {key.decode(): CameraTrack.from_json(value) for key, value in restored.records.items()}
        )
