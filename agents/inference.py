"""Inference stage: frames in, detections out, in a worker group of its own.

``faust -A faust_app:inference worker``: its own consumer group, so it scales apart
from the stream workers, which never load the model. Per frame, on the event loop:
check the key, the headers, the size and that the registry knows the camera (else
the frame goes to the dead letters with the reason), then queue it on its camera's
bounded queue (a camera that falls behind loses its oldest frame, counted).

A batcher task takes up to the adaptive batch size of the oldest frames as soon as
that many wait, the oldest has waited ``KESTREL_MAX_QUEUE_DELAY_MS`` (Triton's
dynamic batcher), or no further frame is expected within that delay (at the
arrival rate seen: :class:`~kestrel.camera.batching.ArrivalGap`), decodes them in a
thread pool (a corrupt JPEG is dead-lettered, the rest of the batch goes on), runs
the detector in its own thread, and publishes one :class:`FrameDetections` per frame
to ``camera.detections``. Deliveries go on while the next batch runs.

Every frame read gets exactly one record out: its detections, its dead letter, or,
for a frame dropped by backpressure (its camera's oldest when the queue was full) or
expired (older than ``KESTREL_FRAME_MAX_AGE_S`` when its batch came), a
``FrameDetections`` marked ``dropped`` that the tracking stage turns into a
``frame_dropped`` record on ``camera.results``. A frame is acked when its own record
is delivered; a delivery that fails (librdkafka has retried it until
``message.timeout.ms``) stops the worker, so a restart replays the frame. This stage
writes at least once: after a crash it may detect a frame again, and the tracking
stage, which writes exactly once, drops the duplicate.

The same batches serve on-demand analysis requests (:mod:`kestrel.ondemand`), read
from the four lane topics: a batch takes the urgent, high and normal requests' images
first (earliest deadline first; a request never waits for the batching delay; at most
half the batch while camera frames wait), then the cameras' frames, then low requests.
A clip is sampled into frames when its request is admitted (in a thread of its own, at
most ``CLIPS_AT_ONCE`` waiting), and each frame is one item of the batches. A request's
events go to ``analysis.events`` and its record is acked when its last event is
delivered; ``analysis.cancel`` is followed by every worker of the group (a group-less
consumer).

The detector is loaded when the worker starts, never at import, and the model's
telemetry (FPS, latency, batch size, queue wait, GPU) goes to ``metrics.model``
through the model-metrics client.
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
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import KafkaError
from confluent_kafka import Message as KafkaMessage

from faust_app import inference as app
from faust_app import settings
from kestrel.camera.batching import AdaptiveBatchSize, ArrivalGap, FrameQueues, Waiting
from kestrel.camera.frames import FrameHeaders, check_camera_id, parse_headers
from kestrel.camera.registry import CameraRegistry, UnknownCameras
from kestrel.collectors.model import ModelMetrics
from kestrel.collectors.system import GpuSampler
from kestrel.deadletter import DeadLetter
from kestrel.errors import InvalidMessage, KestrelError
from kestrel.ondemand.clip import sample
from kestrel.ondemand.compress import decode_image
from kestrel.ondemand.desk import Item, RequestDesk
from kestrel.ondemand.lanes import AHEAD_OF_CAMERAS, Lane, Queued
from kestrel.ondemand.pressure import Limits, MemoryPressure
from kestrel.process import limit_malloc_arenas
from kestrel.producer import KestrelProducer
from kestrel.schemas.analysis import AnalysisCancel, AnalysisRequest, AnyEvent, CompleteEvent
from kestrel.schemas.camera import Detection, FrameDetections
from kestrel.state import original_headers
from kestrel.topics import (
    ANALYSIS_CANCEL,
    ANALYSIS_EVENTS,
    ANALYSIS_REQUESTS,
    CAMERA_DETECTIONS,
    CAMERA_FRAMES,
    DEADLETTER,
    ensure_topics,
    faust_topic,
)
from models import Detector, load_detector

log = logging.getLogger(__name__)
STAGE = "inference"
POLL_S = 0.005  # how often delivery reports (and so acks) are served
REGISTRY_GRACE_S = 2.0  # how long a frame of an unseen camera waits for its registration
UNKNOWN_MEMORY_S = 10.0

frames_topic = faust_topic(app, settings, CAMERA_FRAMES)
detections_topic = faust_topic(app, settings, CAMERA_DETECTIONS)
deadletter_topic = faust_topic(app, settings, DEADLETTER)
requests_topic = faust_topic(app, settings, *ANALYSIS_REQUESTS)
LANE_OF_TOPIC = {
    spec.name(settings): Lane(spec.suffix.rsplit(".", 1)[1]) for spec in ANALYSIS_REQUESTS
}
CANCEL_LOOKBACK_MS = 60_000  # a restarted worker still honours the last minute's cancels
CLIPS_AT_ONCE = 4  # clips read but not yet sampled; the request stream waits beyond it


Image = np.ndarray[Any, np.dtype[np.uint8]]


class DeliveryFailed(KestrelError):
    """Kafka refused a record for good: the worker stops, and a restart replays its input."""


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
        self.arrivals = ArrivalGap(cap_s=2 * settings.max_queue_delay_ms / 1000)
        self.wakeup = asyncio.Event()
        self.detector: Detector | None = None
        self.registry = CameraRegistry(settings)
        self.producer: KestrelProducer | None = None
        self.metrics: ModelMetrics | None = None
        self.request_metrics: ModelMetrics | None = None
        self.gpu: GpuSampler | None = None
        self.batch = AdaptiveBatchSize(max_size=settings.max_batch)
        self.decoders = ThreadPoolExecutor(2, thread_name_prefix="decode")
        self.runner = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.frames = 0
        self.dead_letters: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self._batcher: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._unknown = UnknownCameras(UNKNOWN_MEMORY_S)
        self.desk = RequestDesk(self.emit_event, lambda event: event.ack())
        self.process = psutil.Process()
        self.pressure = MemoryPressure(Limits.for_budget(settings.worker_memory_mb))
        self._cancels: asyncio.Task[None] | None = None
        #: Set once the cancels of the last minute are read: requests wait for it, so a
        #: request cancelled while no worker ran ends cancelled, never runs.
        self.cancels_read = asyncio.Event()
        self.clip_reader = ThreadPoolExecutor(1, thread_name_prefix="clip")
        self.clip_slots = asyncio.Semaphore(CLIPS_AT_ONCE)
        self._clips: set[asyncio.Task[None]] = set()
        #: Both agents start the stage, at once: it is made once, under this lock. (Made
        #: twice, the second producer replaced the first, whose queued events were lost.)
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Load once; at every start of the agent, check that the background tasks run."""
        async with self._starting:
            await self._start()

    async def _start(self) -> None:
        limit_malloc_arenas()  # before the decode, clip and inference threads start
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.registry.start)
        if self._batcher is not None:
            return
        outputs = [CAMERA_DETECTIONS, DEADLETTER, ANALYSIS_EVENTS, ANALYSIS_CANCEL]
        await loop.run_in_executor(None, ensure_topics, settings, outputs)
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
        # Each finished request's summary (digest D's per-session telemetry).
        self.request_metrics = ModelMetrics(
            f"model:{self.detector.name}-requests", settings=settings
        )
        self._poller = asyncio.create_task(self._poll_forever(), name="inference-deliveries")
        self._batcher = asyncio.create_task(self._batch_forever(), name="inference-batcher")
        self._cancels = asyncio.create_task(self._follow_cancels(), name="analysis-cancels")
        self._cancels.add_done_callback(_crash_if_failed)
        log.info("inference: batch size starts at %d (max %d)", self.batch.size, settings.max_batch)

    # Admission, on the event loop ------------------------------------------------------
    async def known(self, camera_id: str, captured_ns: int) -> bool:
        """Is the camera registered? An unseen one gets a short grace for the registry.

        Its producer registers it and then sends frames at once, on another topic, so
        its first frames can come before the registration. A camera still unknown
        after the grace is refused at once for the next ``UNKNOWN_MEMORY_S``, so
        frames of unregistered cameras cannot stall the stream.
        """
        if self.registry.get(camera_id, captured_ns) is not None:
            return True
        if self._unknown.refuses(camera_id, time.monotonic()):
            return False
        loop = asyncio.get_running_loop()
        config = await loop.run_in_executor(
            None, self.registry.wait_for, camera_id, REGISTRY_GRACE_S
        )
        if config is None:
            self._unknown.remember(camera_id, time.monotonic())
        return config is not None

    async def admit(self, event: faust.EventT[bytes]) -> None:
        message = event.message
        try:
            camera_id = check_camera_id((message.key or b"").decode(errors="replace"))
            headers = parse_headers(cast(Any, message.headers))
            if not await self.known(camera_id, headers.capture_ns):
                raise InvalidMessage("unknown_camera", f"camera {camera_id!r} is not registered")
            value = message.value or b""
            if len(value) > settings.max_frame_bytes:
                raise InvalidMessage(
                    "frame_too_large",
                    f"{len(value)} bytes > KESTREL_MAX_FRAME_BYTES={settings.max_frame_bytes}",
                )
        except InvalidMessage as exc:
            self.dead_letter(event, exc)
            return
        frame = Frame(event, camera_id, headers, time.time_ns())
        now = time.monotonic()
        self.arrivals.arrived(now)
        evicted = self.queues.put(camera_id, now, frame)
        if evicted is not None:
            self.drop(evicted.item, "backpressure")
        self.wakeup.set()

    # Outputs: one record per frame, acked when it is delivered --------------------------
    def deliver(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        event: faust.EventT[bytes] | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send a record; ack ``event`` (the input it ends) once Kafka has it."""

        def delivered(err: KafkaError | None, msg: KafkaMessage) -> None:
            if err is None:
                if event is not None:
                    event.ack()
            else:  # librdkafka gave up retrying: never ack, stop, replay on restart
                failure = DeliveryFailed(f"a record to {msg.topic()} was not delivered: {err}")
                asyncio.get_running_loop().create_task(app.crash(failure))

        assert self.producer is not None
        self.producer.send(topic, value, key, headers=headers, on_delivery=delivered)

    def dead_letter(self, event: faust.EventT[bytes], error: InvalidMessage) -> None:
        message = event.message
        letter = DeadLetter(
            error.reason,
            error.detail[:2000],
            STAGE,
            message.topic,
            message.partition,
            message.offset,
        )
        log.warning(
            "dead letter from %s[%d]@%d (%s): %s",
            message.topic,
            message.partition,
            message.offset,
            STAGE,
            error,
        )
        headers = original_headers(message.headers) + letter.headers()
        self.deliver(deadletter_topic.get_topic_name(), message.value, message.key, event, headers)
        self.dead_letters[error.reason] = self.dead_letters.get(error.reason, 0) + 1

    def publish(self, frame: Frame, **fields: Any) -> None:
        """The frame's record on ``camera.detections`` (detections, or why there are none)."""
        assert self.detector is not None
        out = FrameDetections(
            camera_id=frame.camera_id,
            frame_id=frame.headers.frame_id,
            seq=frame.headers.seq,
            capture_ts_ns=frame.headers.capture_ns,
            width=frame.headers.width,
            height=frame.headers.height,
            model=self.detector.name,
            provider=self.detector.provider,
            broker_in_ms=(frame.received_ns - frame.headers.capture_ns) / 1e6,
            **fields,
        )
        topic = detections_topic.get_topic_name()
        self.deliver(topic, out.model_dump_json().encode(), frame.camera_id.encode(), frame.event)

    def drop(self, frame: Frame, reason: str) -> None:
        """A frame that will not be detected: its record says so (see the module)."""
        self.publish(
            frame,
            detections=[],
            dropped=reason,
            batch_size=0,
            queue_ms=0.0,
            decode_ms=0.0,
            inference_ms=0.0,
        )
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def emit_event(self, event: AnyEvent, ack: faust.EventT[bytes] | None) -> None:
        """A request's event on ``analysis.events``; with its last one, the request's ack."""
        topic = ANALYSIS_EVENTS.name(settings)
        self.deliver(topic, event.model_dump_json().encode(), event.request_id.encode(), ack)
        if isinstance(event, CompleteEvent) and self.request_metrics is not None:
            summary = event.payload.summary
            self.request_metrics.record(
                total_tokens=float(summary.total_tokens),
                average_token_latency_ms=summary.average_token_latency_ms,
                p95_token_latency_ms=summary.p95_token_latency_ms,
                first_token_ms=summary.first_token_ms,
                throughput_tokens_per_s=summary.throughput_tokens_per_s,
                max_memory_usage_mb=summary.max_memory_usage_mb,
                error_count=float(summary.error_count),
                queue_ms=summary.queue_ms,
                total_ms=summary.total_ms,
            )

    async def _follow_cancels(self) -> None:
        """Every cancel of the group's requests (a group-less consumer: each worker
        needs all of them), from the last minute on."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False
        )
        await consumer.start()
        try:
            partition = TopicPartition(ANALYSIS_CANCEL.name(settings), 0)
            consumer.assign([partition])
            since = time.time_ns() // 1_000_000 - CANCEL_LOOKBACK_MS
            found = (await consumer.offsets_for_times({partition: since}))[partition]
            end = (await consumer.end_offsets([partition]))[partition]
            consumer.seek(partition, found.offset if found is not None else end)
            while await consumer.position(partition) < end:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        self._cancel(record)
            self.cancels_read.set()
            async for record in consumer:
                self._cancel(record)
        finally:
            await consumer.stop()

    def _cancel(self, record: Any) -> None:
        try:
            cancel = AnalysisCancel.model_validate_json(record.value or b"")
        except ValueError as exc:
            log.warning("analysis.cancel@%d is not a cancel: %s", record.offset, exc)
            return
        self.desk.cancel(cancel.request_id, cancel.reason)

    async def _poll_forever(self) -> None:
        """Serve delivery reports on the event loop, where the acks they make belong."""
        assert self.producer is not None
        while True:
            self.producer.poll()
            await asyncio.sleep(POLL_S)

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

    async def _next_batch(self) -> tuple[list[Waiting[Frame]], list[Queued[Item]]]:
        """Frames and requests' items: requests with a deadline go at once, without the
        batching delay, and take the batch's first places (up to half of it while frames
        wait); low requests the last."""
        delay = settings.max_queue_delay_ms / 1000
        lanes = self.desk.lanes
        while True:
            self.desk.expire()
            if lanes.waiting(AHEAD_OF_CAMERAS):
                break
            oldest = self.queues.oldest()
            if oldest is None:
                if lanes.waiting((Lane.LOW,)):
                    break
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            if len(self.queues) >= self.batch.size:
                break
            remaining = oldest + delay - time.monotonic()
            if remaining <= 0 or not self.arrivals.expected_by(oldest + delay):
                break
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), remaining)
            except TimeoutError:
                break
        size = self.batch.size
        # Frames waiting keep at least half the batch: a clip's dozens of frames, or a
        # burst of requests, go ahead of the cameras but never take all of the detector.
        kept = min(len(self.queues), size // 2)
        ahead = lanes.take(size - kept, AHEAD_OF_CAMERAS)
        frames = self.queues.take(size - len(ahead))
        return frames, ahead + lanes.take(size - len(ahead) - len(frames), (Lane.LOW,))

    async def _run(self, taken: tuple[list[Waiting[Frame]], list[Queued[Item]]]) -> None:
        batch, requests = taken
        oldest_ns = time.time_ns() - round(settings.frame_max_age_s * 1e9)
        for w in [w for w in batch if w.item.headers.capture_ns < oldest_ns]:
            self.drop(w.item, "expired")
        batch = [w for w in batch if w.item.headers.capture_ns >= oldest_ns]
        if not batch and not requests:
            return
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        rss_mb = self.rss_mb()
        self._check_memory(rss_mb)
        self.desk.started(requests, len(batch) + len(requests), rss_mb)
        decoded, request_images = await asyncio.gather(
            asyncio.gather(
                *(
                    loop.run_in_executor(self.decoders, _decode, w.item.event.message.value)
                    for w in batch
                )
            ),
            asyncio.gather(
                *(
                    loop.run_in_executor(self.decoders, _decode_request, q.item.image)
                    for q in requests
                )
            ),
        )
        decode_ms = (time.monotonic() - started) * 1000
        good = [(w, image) for w, image in zip(batch, decoded, strict=True) if image is not None]
        for w, image in zip(batch, decoded, strict=True):
            if image is None:
                self.dead_letter(
                    w.item.event,
                    InvalidMessage("corrupt_jpeg", "the value does not decode as a JPEG"),
                )
        asked: list[tuple[Item, Image]] = []
        for q, pixels in zip(requests, request_images, strict=True):
            if isinstance(pixels, InvalidMessage):
                self.desk.failed(q.item, pixels.reason, pixels.detail)
            else:
                asked.append((q.item, pixels))
        assert self.detector is not None and self.producer is not None
        infer_started = time.monotonic()
        found_all = await self._detect([image for _, image in good + asked])
        inference_ms = (time.monotonic() - infer_started) * 1000
        detected = []
        for (w, _), found in zip(good, found_all[: len(good)], strict=True):
            if isinstance(found, Exception):
                error = InvalidMessage("processing_error", f"{type(found).__name__}: {found}")
                self.dead_letter(w.item.event, error)
            else:
                detected.append((w, found))
        self._answer(asked, found_all[len(good) :])
        for w, found in detected:
            self.publish(
                w.item,
                detections=[
                    Detection(label=label, score=float(score), box=[float(v) for v in box])
                    for box, score, label in zip(
                        found.boxes, found.scores, found.labels, strict=True
                    )
                ],
                batch_size=len(good),
                queue_ms=(started - w.arrived) * 1000,
                decode_ms=decode_ms,
                inference_ms=inference_ms,
            )
        latency_ms = (time.monotonic() - started) * 1000
        self.frames += len(good)
        self._adapt(len(batch) + len(requests), latency_ms)
        self._report(batch, started, latency_ms)

    def _answer(self, asked: list[tuple[Item, Image]], found_all: list[Any]) -> None:
        """Each request's context, findings and result, from what the detector found."""
        assert self.detector is not None
        for (item, image), found in zip(asked, found_all, strict=True):
            if isinstance(found, Exception):
                self.desk.failed(item, "processing_error", f"{type(found).__name__}: {found}")
                continue
            request = item.run.request
            camera = None
            if request.camera_id is not None:
                camera = self.registry.get(request.camera_id)
                if camera is None:
                    message = f"camera {request.camera_id!r} is not registered"
                    self.desk.failed(item, "unknown_camera", message)
                    continue
            detections = [
                Detection(label=label, score=float(score), box=[float(v) for v in box])
                for box, score, label in zip(found.boxes, found.scores, found.labels, strict=True)
            ]
            height, width = image.shape[:2]
            threshold = request.score_threshold or settings.score_threshold
            self.desk.finish(
                item, detections, (width, height), camera, threshold, self.detector.name
            )

    def rss_mb(self) -> float:
        return float(self.process.memory_info().rss) / 2**20

    async def _detect(self, images: list[Image]) -> list[Any]:
        """Run the detector on a batch; if it raises, on each image alone.

        What the detector cannot take (whatever a producer put in it) comes back as
        its exception, in its place, and the rest of the batch goes on.
        """
        assert self.detector is not None
        if not images:
            return []
        loop = asyncio.get_running_loop()
        try:
            results: list[Any] = await loop.run_in_executor(
                self.runner, self.detector.detect, images
            )
            return results
        except Exception:
            log.exception("inference: the batch failed; retrying its images one by one")
        done: list[Any] = []
        for image in images:
            try:
                [found] = await loop.run_in_executor(self.runner, self.detector.detect, [image])
            except Exception as exc:
                done.append(exc)
            else:
                done.append(found)
        return done

    def _check_memory(self, rss_mb: float) -> None:
        """Digest D's monitor (kestrel.ondemand.pressure): shed the low lane first."""
        pressure = self.pressure
        pressure.observe(rss_mb, psutil.virtual_memory().percent)
        self.desk.refuse_low = pressure.shed_low
        if pressure.shed_low:
            pressure.counts["low_shed"] += self.desk.shed_low()

    def _adapt(self, size: int, latency_ms: float) -> None:
        before = self.batch.size
        self.batch.record(size, latency_ms)
        if self.pressure.shrink_batches:
            self.batch.memory_pressure()
            self.pressure.counts["batch_halvings"] += 1
        if self.batch.size != before:
            log.info(
                "batch size %d -> %d (last batch %.0f ms)", before, self.batch.size, latency_ms
            )

    def _report(self, batch: list[Waiting[Frame]], started: float, latency_ms: float) -> None:
        if self.metrics is None:
            return
        pressure = self.pressure
        memory: dict[str, float | None] = {  # the page shows these in its Analyze panel
            "memory_level": float(pressure.level),
            "worker_rss_mb": pressure.rss_mb,
            "host_memory_percent": pressure.host_percent,
            **{f"memory_{name}": float(count) for name, count in pressure.counts.items()},
        }
        if not batch:  # requests only
            self.metrics.record(None, **memory)
            return
        gpu_util, vram_mb = self.gpu.sample() if self.gpu is not None else (None, None)
        self.metrics.record(
            None,
            fps=len(batch) / max(latency_ms / 1000, 1e-6),
            latency_ms=latency_ms,
            batch_size=float(len(batch)),
            queue_wait_ms=float(np.mean([(started - w.arrived) * 1000 for w in batch])),
            gpu_utilization=gpu_util,
            vram_used_mb=vram_mb,
            dropped_frames=float(sum(self.queues.dropped.values())),
            **memory,
        )


def _crash_if_failed(task: asyncio.Task[None]) -> None:
    """A background task that stops is a bug or a lost broker: stop the worker loudly."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped", task.get_name(), exc_info=task.exception())
        asyncio.get_running_loop().create_task(app.crash(task.exception()))  # type: ignore[arg-type]


def _decode_request(data: bytes) -> Image | InvalidMessage:
    """A request's image, or why not (its declared size is checked before decoding:
    any producer can write to the request topics)."""
    try:
        return decode_image(data, settings.upload_max_pixels)
    except InvalidMessage as exc:
        return exc


def _decode(jpeg: bytes | None) -> Image | None:
    """A BGR image, or None for bytes that are not a decodable image."""
    if not jpeg:
        return None
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return None if image is None else np.asarray(image, dtype=np.uint8)


stage = InferenceStage()


@app.agent(frames_topic)
async def infer(stream: faust.StreamT[bytes]) -> None:
    """Admit every frame; each is acked once its record is delivered."""
    manual_acks = cast(faust.Stream[bytes], stream).noack()
    await stage.start()
    async for event in manual_acks.events():
        await stage.admit(event)


# On-demand analysis --------------------------------------------------------------------
async def _admit_request(event: faust.EventT[bytes]) -> None:
    """Parse a request and hand it to the desk; a malformed one is dead-lettered.

    A clip is sampled first, off the loop; the stream goes on meanwhile, and waits
    only while ``CLIPS_AT_ONCE`` clips are being sampled.
    """
    message = event.message
    lane = LANE_OF_TOPIC[message.topic]
    try:
        request = AnalysisRequest.model_validate_json(message.value or b"")
    except ValueError as exc:  # pydantic's ValidationError
        stage.dead_letter(event, InvalidMessage("bad_request", str(exc)))
        return
    if request.clip is None:
        stage.desk.admit(request, lane, event)
        stage.wakeup.set()
        return
    await stage.clip_slots.acquire()
    task = asyncio.create_task(_admit_clip(request, lane, event), name="analysis-clip")
    stage._clips.add(task)
    task.add_done_callback(stage._clips.discard)
    task.add_done_callback(_crash_if_failed)


async def _admit_clip(request: AnalysisRequest, lane: Lane, event: faust.EventT[bytes]) -> None:
    loop = asyncio.get_running_loop()
    try:
        frames = await loop.run_in_executor(
            stage.clip_reader,
            sample,
            request.clip or b"",
            settings.clip_fps,
            settings.clip_max_s,
            settings.upload_max_pixels,
        )
    except InvalidMessage as exc:
        stage.desk.admit(request, lane, event, refused=exc)
        return
    finally:
        stage.clip_slots.release()
    stage.desk.admit(request, lane, event, frames=frames)
    stage.wakeup.set()


@app.agent(requests_topic)
async def serve_requests(stream: faust.StreamT[bytes]) -> None:
    """Admit every request; each is acked once its last event is delivered."""
    manual_acks = cast(faust.Stream[bytes], stream).noack()
    await stage.start()
    await stage.cancels_read.wait()
    async for event in manual_acks.events():
        await _admit_request(event)
