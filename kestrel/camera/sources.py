"""Frame sources: synthetic scenes, video files, RTSP/HTTP streams, local devices.

``open_source("synthetic:7")``, ``open_source("clip.mp4")``,
``open_source("rtsp://host/stream")``, ``open_source("device:0")``. Every source
returns BGR frames from :meth:`FrameSource.read`, or None when it has nothing (a
dropped stream, the end of a file); the camera loop then reconnects with backoff.
OpenCV's capture calls block: sources are read from the camera's own thread.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import cv2
import numpy as np

from kestrel.camera.synthetic import Image, SyntheticScene, Truth


class FrameSource(ABC):
    """Where one camera's frames come from."""

    #: True when each frame's ground truth is known (synthetic scenes).
    has_truth = False

    @abstractmethod
    def open(self) -> None:
        """(Re)connect; raise OSError when the source cannot be opened."""

    @abstractmethod
    def read(self) -> Image | None:
        """The next frame, or None when the source has dropped or ended."""

    def truth(self) -> list[Truth]:
        """The true boxes of the frame last read (synthetic sources only)."""
        return []

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release the device or stream."""


class SyntheticSource(FrameSource):
    """A :class:`SyntheticScene`; its clock starts when it is opened."""

    has_truth = True

    def __init__(self, seed: int, width: int = 640, height: int = 480, actors: int = 3) -> None:
        self.scene = SyntheticScene(seed, width, height, actors)
        self._start = 0.0
        self._truth: list[Truth] = []

    def open(self) -> None:
        self._start = time.monotonic()

    def read(self) -> Image | None:
        frame, self._truth = self.scene.render(time.monotonic() - self._start)
        return frame

    def truth(self) -> list[Truth]:
        return self._truth


class CaptureSource(FrameSource):
    """Anything OpenCV's VideoCapture opens: a file, a URL, a device index."""

    def __init__(self, target: str | int, loop: bool = False) -> None:
        self.target = target
        self.loop = loop
        self._capture: cv2.VideoCapture | None = None

    def open(self) -> None:
        self.close()
        capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():
            raise OSError(f"cannot open video source {self.target!r}")
        self._capture = capture

    def read(self) -> Image | None:
        if self._capture is None:
            return None
        ok, frame = self._capture.read()
        if not ok and self.loop and isinstance(self.target, str):
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._capture.read()
        return np.asarray(frame, dtype=np.uint8) if ok else None

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def open_source(spec: str, loop_files: bool = True) -> FrameSource:
    """The source a camera config's ``source`` names."""
    if spec.startswith("synthetic:"):
        return SyntheticSource(int(spec.removeprefix("synthetic:")))
    if spec.startswith("device:"):
        return CaptureSource(int(spec.removeprefix("device:")))
    if "://" in spec:
        return CaptureSource(spec)
    return CaptureSource(spec.removeprefix("file:"), loop=loop_files)
