"""The camera producer: capture in threads, JPEG in a process pool, frames to Kafka.

One thread per camera reads its source at the camera's FPS cap (a source that drops
is reopened with exponential backoff, 0.5 s doubling to 30 s), and hands each frame
to a process pool that encodes it as JPEG (``cv2.imencode`` would hold the capture
thread, and the GIL-free share of it is small). The encoded bytes go to
``camera.frames`` as the raw value, keyed by camera id, with the frame's facts in
headers (:mod:`kestrel.camera.frames`), in capture order: encodes finish in any
order, and a frame waits for the ones captured before it (a consumer of a camera's
partition sees its frames in order, and tracking relies on it). When a camera's
encodes fall behind (more than two in flight) its newest frame is skipped and
counted, so memory stays bounded. A :class:`CameraFleet` registers each camera it
starts in the registry and removes it when it stops, so cameras come and go while the
pipeline runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import IO

import cv2
import numpy as np
import orjson

from kestrel.camera.frames import FrameHeaders, check_camera_id
from kestrel.camera.registry import register, unregister
from kestrel.camera.sources import FrameSource, open_source
from kestrel.camera.synthetic import Image
from kestrel.producer import KestrelProducer
from kestrel.schemas.camera import CameraConfig
from kestrel.settings import Settings
from kestrel.topics import CAMERA_FRAMES

log = logging.getLogger(__name__)

JPEG_QUALITY = 85
MAX_IN_FLIGHT = 2
BACKOFF_S = (0.5, 30.0)


def encode_jpeg(frame: Image, quality: int = JPEG_QUALITY) -> bytes:
    """Runs in the process pool."""
    ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(buffer)


@dataclass
class CameraStats:
    captured: int = 0
    sent: int = 0
    skipped_behind: int = 0
    reconnects: int = 0


@dataclass
class CameraRunner:
    """One camera's capture thread."""

    config: CameraConfig
    source: FrameSource
    send: Callable[[str, FrameHeaders, bytes, list[object]], None]
    pool: ProcessPoolExecutor
    stats: CameraStats = field(default_factory=CameraStats)
    _stop: threading.Event = field(default_factory=threading.Event)
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    #: Encoded frames waiting for an earlier one, by seq; the next seq to send.
    _ready: dict[int, tuple[FrameHeaders, bytes | None, list[object]]] = field(default_factory=dict)
    _next_seq: int = 0

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"camera-{self.config.camera_id}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _connect(self) -> bool:
        backoff = BACKOFF_S[0]
        while not self._stop.is_set():
            try:
                self.source.open()
                return True
            except OSError as exc:
                self.stats.reconnects += 1
                log.warning("%s: %s; retrying in %.1f s", self.config.camera_id, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_S[1])
        return False

    def _run(self) -> None:
        camera_id, period = self.config.camera_id, 1.0 / self.config.fps
        seq = 0
        if not self._connect():
            return
        next_at = time.monotonic()
        while not self._stop.is_set():
            frame = self.source.read()
            if frame is None:  # the source dropped or ended: reconnect
                self.stats.reconnects += 1
                if not self._connect():
                    break
                continue
            capture_ns = time.time_ns()
            self.stats.captured += 1
            with self._lock:
                behind = self._in_flight >= MAX_IN_FLIGHT
                if not behind:
                    self._in_flight += 1
            if behind:
                self.stats.skipped_behind += 1
            else:
                headers = FrameHeaders.make(
                    camera_id, capture_ns, seq, frame.shape[1], frame.shape[0]
                )
                truth: list[object] = [
                    {"actor_id": t.actor_id, "label": t.label, "box": list(t.box)}
                    for t in self.source.truth()
                ]
                future = self.pool.submit(encode_jpeg, frame)
                future.add_done_callback(self._encoded(headers, truth))
                seq += 1
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()  # behind the cap: never burst to catch up
        self.source.close()

    def _encoded(
        self, headers: FrameHeaders, truth: list[object]
    ) -> Callable[[Future[bytes]], None]:
        def done(future: Future[bytes]) -> None:
            jpeg: bytes | None
            try:
                jpeg = future.result()
            except Exception:  # a broken frame: log it, keep the camera running
                log.exception("%s: encoding frame %d failed", self.config.camera_id, headers.seq)
                jpeg = None
            with self._lock:
                self._in_flight -= 1
                self._ready[headers.seq] = (headers, jpeg, truth)
                # Send in capture order; the lock keeps two callbacks from interleaving.
                while self._next_seq in self._ready:
                    ready_headers, ready_jpeg, ready_truth = self._ready.pop(self._next_seq)
                    self._next_seq += 1
                    if ready_jpeg is not None:
                        self.send(self.config.camera_id, ready_headers, ready_jpeg, ready_truth)
                        self.stats.sent += 1

        return done


class CameraFleet:
    """The cameras of one producer process: start, stop, and replace them while running."""

    def __init__(self, settings: Settings, workers: int = 2, truth_out: IO[bytes] | None = None):
        self.settings = settings
        self.producer = KestrelProducer(settings, **{"linger.ms": 2, "compression.type": "none"})
        self.pool = ProcessPoolExecutor(max_workers=workers)
        self.runners: dict[str, CameraRunner] = {}
        self.topic = CAMERA_FRAMES.name(settings)
        self._truth_out = truth_out
        self._truth_lock = threading.Lock()

    def _send(
        self, camera_id: str, headers: FrameHeaders, jpeg: bytes, truth: list[object]
    ) -> None:
        self.producer.send(self.topic, jpeg, camera_id.encode(), headers=headers.encode())
        if self._truth_out is not None and truth is not None:
            line = orjson.dumps(
                {"frame_id": headers.frame_id, "camera_id": camera_id, "truth": truth}
            )
            with self._truth_lock:
                self._truth_out.write(line + b"\n")

    def apply(self, configs: list[CameraConfig]) -> None:
        """Run exactly these cameras: start new ones, stop removed or changed ones."""
        wanted = {c.camera_id: c for c in configs}
        for camera_id in list(self.runners):
            if camera_id not in wanted or wanted[camera_id] != self.runners[camera_id].config:
                self.remove(camera_id, keep_registered=camera_id in wanted)
        for camera_id, config in wanted.items():
            if camera_id not in self.runners:
                self.add(config)
        self.producer.flush(10)

    def add(self, config: CameraConfig) -> None:
        check_camera_id(config.camera_id)
        register(self.producer, self.settings, config)
        runner = CameraRunner(config, open_source(config.source), self._send, self.pool)
        self.runners[config.camera_id] = runner
        runner.start()
        log.info("camera %s started (%s, %g fps)", config.camera_id, config.source, config.fps)

    def remove(self, camera_id: str, keep_registered: bool = False) -> None:
        runner = self.runners.pop(camera_id, None)
        if runner is not None:
            runner.stop()
        if not keep_registered:
            unregister(self.producer, self.settings, camera_id)
        log.info("camera %s stopped", camera_id)

    def close(self) -> None:
        for camera_id in list(self.runners):
            self.remove(camera_id)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.producer.flush(10)


def warm_pool(pool: ProcessPoolExecutor) -> None:
    """Start the encoder processes before the first frame needs one."""
    pool.submit(encode_jpeg, np.zeros((8, 8, 3), np.uint8)).result()
