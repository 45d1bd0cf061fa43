"""Tracking stage: detections in; tracks, zones, line counts and results out.

Runs in the stream workers (no model here). ``camera.detections`` is keyed by camera
id, so one worker sees all of a camera's frames, in order, and owns its entry in the
``camera-tracks`` table (:mod:`tables.camera_tracks`): the tracker, the line totals
and the offset they reflect. Per frame: update the tracker, find each confirmed
track's zones and line crossings (:mod:`kestrel.camera.geometry`), publish the
digest's result shape (:class:`kestrel.schemas.camera.CameraResult`) to
``camera.results`` and the frame's per-class counts to ``metrics.camera``, where the
telemetry stage windows them (1 s / 10 s / 5 min) like any metric.

A replayed detection (offset at or below the camera's stored offset, after a crash)
is skipped. Results are delivered before Faust acks the frame's detections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
import orjson

from agents.deadletter import send_to_dead_letter
from faust_app import app, settings
from kestrel.camera.geometry import crossing, foot, inside
from kestrel.camera.registry import CameraRegistry
from kestrel.camera.tracker import Tracker
from kestrel.errors import InvalidMessage
from kestrel.producer import KestrelProducer
from kestrel.schemas.camera import (
    AggSummary,
    CameraConfig,
    CameraResult,
    FrameDetections,
    LineCount,
    ModelResult,
    PostProcessingResult,
    ResultData,
    ResultMetadata,
    TrackedObject,
)
from kestrel.topics import (
    CAMERA_DETECTIONS,
    CAMERA_FRAMES,
    CAMERA_RESULTS,
    METRICS_CAMERA,
    ensure_topics,
    faust_topic,
)
from tables.camera_tracks import camera_tracks

log = logging.getLogger(__name__)
STAGE = "tracking"

detections_topic = faust_topic(app, settings, CAMERA_DETECTIONS)
results_topic = faust_topic(app, settings, CAMERA_RESULTS)


class TrackingStage:
    def __init__(self) -> None:
        self.registry = CameraRegistry(settings)
        self._producer: KestrelProducer | None = None
        self.frames = 0
        self.replayed = 0
        self._waited: set[str] = set()

    @property
    def producer(self) -> KestrelProducer:
        assert self._producer is not None, "TrackingStage.start() was not awaited"
        return self._producer

    async def start(self) -> None:
        if self._producer is None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                None, ensure_topics, settings, [CAMERA_RESULTS, METRICS_CAMERA]
            )
            await loop.run_in_executor(None, self.registry.start)
            self._producer = KestrelProducer(settings, **{"linger.ms": 1})

    async def config(self, camera_id: str) -> CameraConfig | None:
        """The camera's zones and lines; a short grace if the registry lags (see inference)."""
        found = self.registry.get(camera_id)
        if found is None and camera_id not in self._waited:
            self._waited.add(camera_id)  # once per camera: never stall the stream twice
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(None, self.registry.wait_for, camera_id, 2.0)
        return found

    async def handle(self, event: faust.EventT[bytes]) -> None:
        message = event.message
        try:
            frame = FrameDetections.model_validate_json(message.value or b"")
        except ValueError as exc:
            send_to_dead_letter(
                self.producer, event, InvalidMessage("invalid_field", str(exc)[:500]), STAGE
            )
            return
        state: dict[str, Any] = camera_tracks.get(frame.camera_id) or {}
        if message.offset <= state.get("offset", -1):
            self.replayed += 1
            return
        started = time.time_ns()
        tracker = Tracker.from_json(state.get("tracker", {}))
        before = {t.track_id: foot(t.box) for t in tracker.tracks or []}
        tracks = tracker.match_and_update(
            [tuple(d.box) for d in frame.detections],  # type: ignore[misc]
            [d.score for d in frame.detections],
            [d.label for d in frame.detections],
        )
        config = await self.config(frame.camera_id)
        zones = config.zones if config else []
        lines = config.lines if config else []
        totals: dict[str, dict[str, int]] = state.get("lines", {})
        labels: set[str] = set(state.get("labels", []))
        objects = []
        counts: dict[str, int] = {}
        in_zones: dict[str, dict[str, int]] = {z.name: {} for z in zones}
        for track in tracks:
            here = foot(track.box)
            names = [z.name for z in zones if inside(here, z.polygon)]
            for name in names:
                in_zones[name][track.label] = in_zones[name].get(track.label, 0) + 1
            previous = before.get(track.track_id)
            if previous is not None:
                for line in lines:
                    direction = crossing(tuple(line.a), tuple(line.b), previous, here)  # type: ignore[arg-type]
                    if direction is not None:
                        total = totals.setdefault(line.name, {"in": 0, "out": 0})
                        total[direction] += 1
            counts[track.label] = counts.get(track.label, 0) + 1
            labels.add(track.label)
            objects.append(
                TrackedObject(
                    track_id=track.track_id,
                    label=track.label,
                    score=track.score,
                    box=list(track.box),
                    velocity=list(track.velocity),
                    age=track.age,
                    zones=names,
                )
            )
        for label in labels:
            counts.setdefault(label, 0)
        for line in lines:
            totals.setdefault(line.name, {"in": 0, "out": 0})
        tracking_ms = (time.time_ns() - started) / 1e6
        done_ns = time.time_ns()
        arrived_ms = (started - frame.capture_ts_ns) / 1e6
        result = CameraResult(
            camera_id=frame.camera_id,
            message_key=frame.camera_id,
            frame_id=frame.frame_id,
            input_stream=CAMERA_FRAMES.name(settings),
            data=ResultData(
                post_processing_result=PostProcessingResult(
                    agg_summary=AggSummary(
                        counts=counts,
                        zones=in_zones,
                        line_crossings={
                            name: LineCount.model_validate(t) for name, t in totals.items()
                        },
                        active_tracks=len(tracker.tracks or []),
                    ),
                    tracked_objects=objects,
                ),
                model_result=ModelResult(
                    model=frame.model,
                    provider=frame.provider,
                    batch_size=frame.batch_size,
                    detections=frame.detections,
                ),
                metadata=ResultMetadata(
                    capture_ts_ns=frame.capture_ts_ns,
                    seq=frame.seq,
                    width=frame.width,
                    height=frame.height,
                    stages_ms={
                        "broker_in": frame.broker_in_ms,
                        "queue": frame.queue_ms,
                        "decode": frame.decode_ms,
                        "inference": frame.inference_ms,
                        "to_tracking": arrived_ms
                        - frame.broker_in_ms
                        - frame.queue_ms
                        - frame.decode_ms
                        - frame.inference_ms,
                        "tracking": tracking_ms,
                    },
                ),
                processing_time=(done_ns - frame.capture_ts_ns) / 1e9,
                stream_key=frame.camera_id,
            ),
        )
        key = frame.camera_id.encode()
        self.producer.send(
            results_topic.get_topic_name(), result.model_dump_json(by_alias=True).encode(), key
        )
        capture_ms = frame.capture_ts_ns // 1_000_000
        envelope = {
            "timestamp": capture_ms,
            "source": f"camera:{frame.camera_id}",
            "type": "metrics",
            "data": {label: float(n) for label, n in counts.items()},
        }
        self.producer.send(
            METRICS_CAMERA.name(settings),
            orjson.dumps(envelope),
            f"camera:{frame.camera_id}".encode(),
        )
        camera_tracks[frame.camera_id] = {
            "tracker": tracker.to_json(),
            "lines": totals,
            "labels": sorted(labels),
            "offset": message.offset,
        }
        self.frames += 1


stage = TrackingStage()


@app.agent(detections_topic)
async def track(stream: faust.StreamT[bytes]) -> None:
    """Track every frame's detections; results are delivered before the ack."""
    await stage.start()
    async for event in stream.events():
        await stage.handle(event)
        await stage.producer.flush_async()
