"""Inference stage: frames in, detections out, in a worker group of its own.

``faust -A faust_app:inference worker``: its own consumer group, so it scales apart
from the stream workers, which never load the model. Per frame, on the event loop:
check the key, the headers, the size and that the registry knows the camera (else
the frame goes to the dead letters with the reason), then queue it on its camera's
bounded queue (a camera that falls behind loses its oldest frame, counted).

A batcher task takes up to the adaptive batch size of the oldest frames as soon as
that many wait or the oldest has waited ``KESTREL_MAX_QUEUE_DELAY_MS`` (Triton's
dynamic batcher), decodes them in a thread pool (a corrupt JPEG is dead-lettered,
the rest of the batch goes on), runs the detector in its own thread, publishes one
:class:`FrameDetections` per frame to ``camera.detections``, and acks the frames
once those are delivered; up to three batches wait for delivery while the next one
runs. The detector is loaded when the worker starts, never at
import, and the model's telemetry (FPS, latency, batch size, queue wait, GPU) goes
to ``metrics.model`` through the model-metrics client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import cv2
import faust
import numpy as np
import psutil

from agents.deadletter import send_to_dead_letter
from faust_app import inference as app
from faust_app import settings
from kestrel.camera.batching import AdaptiveBatchSize, FrameQueues, Waiting
from kestrel.camera.frames import FrameHeaders, check_camera_id, parse_headers
from kestrel.camera.registry import CameraRegistry
from kestrel.collectors.model import ModelMetrics
from kestrel.collectors.system import GpuSampler
from kestrel.errors import InvalidMessage
from kestrel.producer import KestrelProducer
from kestrel.schemas.camera import Detection, FrameDetections
from kestrel.topics import CAMERA_DETECTIONS, CAMERA_FRAMES, DEADLETTER, ensure_topics, faust_topic
from models import Detector, load_detector

log = logging.getLogger(__name__)
STAGE = "inference"
MAX_IN_FLIGHT = 3  # batches whose detections are being delivered (digest B: 3 requests)
REGISTRY_GRACE_S = 2.0  # how long a frame of an unseen camera waits for its registration
UNKNOWN_MEMORY_S = 10.0

frames_topic = faust_topic(app, settings, CAMERA_FRAMES)
detections_topic = faust_topic(app, settings, CAMERA_DETECTIONS)
faust_topic(app, settings, DEADLETTER)  # declared: this worker creates it as catalogued


@dataclass
class Frame:
    event: faust.EventT[bytes]
    camera_id: str
    headers: FrameHeaders
    received_ns: int


class InferenceStage:
    """Queues, batcher, detector and counters of one inference worker."""

    def __init__(self) -> None:
        self.queues: FrameQueues[Frame] = FrameQueues(settings.camera_queue_frames)
        self.wakeup = asyncio.Event()
        self.detector: Detector | None = None
        self.registry = CameraRegistry(settings)
        self.producer: KestrelProducer | None = None
        self.metrics: ModelMetrics | None = None
        self.gpu: GpuSampler | None = None
        self.batch = AdaptiveBatchSize(max_size=settings.max_batch)
        self.decoders = ThreadPoolExecutor(2, thread_name_prefix="decode")
        self.runner = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.frames = 0
        self.dead_letters: dict[str, int] = {}
        self._batcher: asyncio.Task[None] | None = None
        self._acking: set[asyncio.Task[None]] = set()
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._unknown: dict[str, float] = {}  # camera id -> refuse at once until

    async def start(self) -> None:
        if self._batcher is not None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ensure_topics, settings, [CAMERA_DETECTIONS, DEADLETTER])
        await loop.run_in_executor(None, self.registry.start)
        self.detector = await loop.run_in_executor(self.runner, load_detector, settings)
        self.gpu = GpuSampler()
        vram = None
        if self.detector.provider == "CUDAExecutionProvider" and self.gpu.handles:
            import pynvml

            vram = int(pynvml.nvmlDeviceGetMemoryInfo(self.gpu.handles[0]).total)
        self.batch = AdaptiveBatchSize.for_device(
            vram,
            1,
            settings.max_batch,
            target_ms=settings.latency_target_ms,
            max_ms=settings.latency_max_ms,
        )
        self.producer = KestrelProducer(settings, **{"linger.ms": 1})
        self.metrics = ModelMetrics(f"model:{self.detector.name}", settings=settings)
        self._batcher = asyncio.create_task(self._batch_forever(), name="inference-batcher")
        log.info("inference: batch size starts at %d (max %d)", self.batch.size, settings.max_batch)

    # Admission, on the event loop ------------------------------------------------------
    async def known(self, camera_id: str) -> bool:
        """Is the camera registered? An unseen one gets a short grace for the registry.

        Its producer registers it and then sends frames at once, on another topic, so
        its first frames can come before the registration. A camera still unknown
        after the grace is refused at once for the next ``UNKNOWN_MEMORY_S``, so
        frames of unregistered cameras cannot stall the stream.
        """
        if self.registry.get(camera_id) is not None:
            return True
        if self._unknown.get(camera_id, 0.0) > time.monotonic():
            return False
        loop = asyncio.get_running_loop()
        config = await loop.run_in_executor(
            None, self.registry.wait_for, camera_id, REGISTRY_GRACE_S
        )
        if config is None:
            self._unknown[camera_id] = time.monotonic() + UNKNOWN_MEMORY_S
        return config is not None

    async def admit(self, event: faust.EventT[bytes]) -> None:
        message = event.message
        try:
            camera_id = check_camera_id((message.key or b"").decode(errors="replace"))
            if not await self.known(camera_id):
                raise InvalidMessage("unknown_camera", f"camera {camera_id!r} is not registered")
            value = message.value or b""
            if len(value) > settings.max_frame_bytes:
                raise InvalidMessage(
                    "frame_too_large",
                    f"{len(value)} bytes > KESTREL_MAX_FRAME_BYTES={settings.max_frame_bytes}",
                )
            headers = parse_headers(cast(Any, message.headers))
        except InvalidMessage as exc:
            self.dead_letter(event, exc)
            task = asyncio.create_task(self._ack_when_delivered([event]))
            self._acking.add(task)
            task.add_done_callback(self._acking.discard)
            return
        frame = Frame(event, camera_id, headers, time.time_ns())
        evicted = self.queues.put(camera_id, time.monotonic(), frame)
        if evicted is not None:
            evicted.item.event.ack()  # dropped on purpose: counted, not retried
        self.wakeup.set()

    def dead_letter(self, event: faust.EventT[bytes], error: InvalidMessage) -> None:
        assert self.producer is not None
        send_to_dead_letter(self.producer, event, error, stage=STAGE)
        self.dead_letters[error.reason] = self.dead_letters.get(error.reason, 0) + 1

    async def _ack_when_delivered(self, events: list[faust.EventT[bytes]]) -> None:
        """Ack only once the dead letters are durable: a crash never loses one."""
        assert self.producer is not None
        await self.producer.flush_async()
        for event in events:
            event.ack()

    # Batching --------------------------------------------------------------------------
    async def _batch_forever(self) -> None:
        while True:
            try:
                batch = await self._next_batch()
                await self._run(batch)
            except Exception as exc:  # a bug: fail loudly (Faust restarts nothing by itself)
                log.exception("inference batcher failed")
                await app.crash(exc)
                return

    async def _next_batch(self) -> list[Waiting[Frame]]:
        delay = settings.max_queue_delay_ms / 1000
        while True:
            oldest = self.queues.oldest()
            if oldest is None:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            if len(self.queues) >= self.batch.size:
                break
            remaining = oldest + delay - time.monotonic()
            if remaining <= 0:
                break
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), remaining)
            except TimeoutError:
                break
        return self.queues.take(self.batch.size)

    async def _run(self, batch: list[Waiting[Frame]]) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        decoded = await asyncio.gather(
            *(
                loop.run_in_executor(self.decoders, _decode, w.item.event.message.value)
                for w in batch
            )
        )
        decode_ms = (time.monotonic() - started) * 1000
        good = [(w, image) for w, image in zip(batch, decoded, strict=True) if image is not None]
        for w, image in zip(batch, decoded, strict=True):
            if image is None:
                self.dead_letter(
                    w.item.event,
                    InvalidMessage("corrupt_jpeg", "the value does not decode as a JPEG"),
                )
        assert self.detector is not None and self.producer is not None
        infer_started = time.monotonic()
        results = await loop.run_in_executor(
            self.runner, self.detector.detect, [image for _, image in good]
        )
        inference_ms = (time.monotonic() - infer_started) * 1000
        for (w, _), found in zip(good, results, strict=True):
            frame = w.item
            out = FrameDetections(
                camera_id=frame.camera_id,
                frame_id=frame.headers.frame_id,
                seq=frame.headers.seq,
                capture_ts_ns=frame.headers.capture_ns,
                width=frame.headers.width,
                height=frame.headers.height,
                detections=[
                    Detection(label=label, score=float(score), box=[float(v) for v in box])
                    for box, score, label in zip(
                        found.boxes, found.scores, found.labels, strict=True
                    )
                ],
                model=self.detector.name,
                provider=self.detector.provider,
                batch_size=len(good),
                queue_ms=(started - w.arrived) * 1000,
                decode_ms=decode_ms,
                inference_ms=inference_ms,
                broker_in_ms=(frame.received_ns - frame.headers.capture_ns) / 1e6,
            )
            self.producer.send(
                detections_topic.get_topic_name(),
                out.model_dump_json().encode(),
                frame.camera_id.encode(),
            )
        latency_ms = (time.monotonic() - started) * 1000
        self.frames += len(good)
        self._adapt(len(batch), latency_ms)
        self._report(batch, started, latency_ms)
        # Deliver in the background and go on to the next batch: up to MAX_IN_FLIGHT
        # batches are in flight, as the digest's workers keep several requests going.
        await self._in_flight.acquire()
        task = asyncio.create_task(self._deliver(batch))
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    async def _deliver(self, batch: list[Waiting[Frame]]) -> None:
        """Ack a batch's frames once their detections are durable."""
        try:
            assert self.producer is not None
            await self.producer.flush_async()
            for w in batch:
                w.item.event.ack()
        finally:
            self._in_flight.release()

    def _adapt(self, size: int, latency_ms: float) -> None:
        before = self.batch.size
        self.batch.record(size, latency_ms)
        if psutil.virtual_memory().percent > 90:
            self.batch.memory_pressure()
        if self.batch.size != before:
            log.info(
                "batch size %d -> %d (last batch %.0f ms)", before, self.batch.size, latency_ms
            )

    def _report(self, batch: list[Waiting[Frame]], started: float, latency_ms: float) -> None:
        if self.metrics is None or not batch:
            return
        gpu_util, vram_mb = self.gpu.sample() if self.gpu is not None else (None, None)
        self.metrics.record(
            fps=len(batch) / max(latency_ms / 1000, 1e-6),
            latency_ms=latency_ms,
            batch_size=float(len(batch)),
            queue_wait_ms=float(np.mean([(started - w.arrived) * 1000 for w in batch])),
            gpu_utilization=gpu_util,
            vram_used_mb=vram_mb,
            dropped_frames=float(sum(self.queues.dropped.values())),
        )


def _decode(jpeg: bytes | None) -> np.ndarray[Any, np.dtype[np.uint8]] | None:
    """A BGR image, or None for bytes that are not a decodable image."""
    if not jpeg:
        return None
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return None if image is None else np.asarray(image, dtype=np.uint8)


stage = InferenceStage()


@app.agent(frames_topic)
async def infer(stream: faust.StreamT[bytes]) -> None:
    """Admit every frame; the batcher acks them once their detections are out."""
    manual_acks = cast(faust.Stream[bytes], stream).noack()
    await stage.start()
    async for event in manual_acks.events():
        await stage.admit(event)
