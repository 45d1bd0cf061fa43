"""The tracking stage's state: each camera's tracker, line totals and progress.

Task ``p`` of the tracking stage (:mod:`kestrel.state`) owns partition ``p`` of
``camera.detections``, keyed by camera id, so every frame of a camera reaches one
task, in order. Its changelog holds one record per camera (key: the camera id):

* ``tracker``: the tracker's tracks (:meth:`kestrel.camera.tracker.Tracker.to_json`);
* ``lines`` and ``labels``: line-crossing totals, the classes seen so far;
* ``last_ns``: the capture time of the last frame applied to the tracker;
* ``drops``: capture times of frames dropped upstream and not yet passed by an applied
  frame (their drop records must not repeat).

A frame's detections are applied once: a frame captured at or before ``last_ns`` was
already handled (an upstream duplicate: the inference group replays after a crash,
a camera producer may retry), as is a drop already recorded; both are counted and
produce nothing, so each frame id gets exactly one record on ``camera.results``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from kestrel.state import Restored


@dataclass
class CameraTrack:
    """One camera's state, as stored."""

    tracker: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, dict[str, int]] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    last_ns: int = -1
    drops: list[int] = field(default_factory=list)

    def handled(self, capture_ns: int, dropped: bool) -> bool:
        """Has a record for this frame already gone out?"""
        return capture_ns <= self.last_ns or (dropped and capture_ns in self.drops)

    def applied(self, capture_ns: int) -> None:
        self.last_ns = capture_ns
        self.drops = [d for d in self.drops if d > capture_ns]

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "tracker": self.tracker,
                "lines": self.lines,
                "labels": self.labels,
                "last_ns": self.last_ns,
                "drops": self.drops,
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
            drops=[int(d) for d in data["drops"]],
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
