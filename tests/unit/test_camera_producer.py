"""The camera runner's capture loop: FPS cap, reconnects with backoff, JPEG in a pool."""

from __future__ import annotations

import threading
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np
import pytest

from kestrel.camera.frames import FrameHeaders
from kestrel.camera.producer import CameraRunner
from kestrel.camera.sources import FrameSource
from kestrel.camera.synthetic import Image
from kestrel.schemas.camera import CameraConfig

pytestmark = pytest.mark.timeout(60)


class FlakySource(FrameSource):
    """Refuses its first open; drops after its third frame (once); else a grey frame."""

    def __init__(self) -> None:
        self.opens = 0
        self.reads = 0

    def open(self) -> None:
        self.opens += 1
        if self.opens == 1:
            raise OSError("camera unplugged")

    def read(self) -> Image | None:
        self.reads += 1
        if self.reads == 4:
            return None  # the stream dropped
        return np.full((48, 64, 3), 128, np.uint8)


def test_a_dropped_source_is_reopened_and_frames_keep_coming() -> None:
    source = FlakySource()
    got: list[tuple[FrameHeaders, bytes]] = []
    enough = threading.Event()

    def send(camera_id: str, headers: FrameHeaders, jpeg: bytes, truth: list[object]) -> None:
        got.append((headers, jpeg))
        if len(got) >= 6:
            enough.set()

    with ProcessPoolExecutor(1) as pool:
        config = CameraConfig(camera_id="cam", source="test", fps=50)
        runner = CameraRunner(config, source, send, pool)
        runner.start()
        assert enough.wait(30), f"only {len(got)} frames"
        runner.stop()
    assert source.opens == 3  # refused, opened, reopened after the drop
    assert runner.stats.reconnects == 2
    assert sorted(h.seq for h, _ in got)[:6] == list(range(6))
    image = cv2.imdecode(np.frombuffer(got[0][1], np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (48, 64, 3)  # a real JPEG of the frame
    assert (got[0][0].width, got[0][0].height) == (64, 48)
