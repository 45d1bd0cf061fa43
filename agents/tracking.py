"""Tracking stage: detections in; tracks, zones, line counts and results out.

Runs in the stream workers (no model here). ``camera.detections`` is keyed by camera
id, so one task (:mod:`kestrel.state`) sees all of a camera's frames, and
owns its state (:mod:`tables.camera_tracks`): the tracker, the line totals and the
frames already handled. Per frame: update the tracker, find each confirmed track's
zones and line crossings (:mod:`kestrel.camera.geometry`), publish the digest's result
shape (:class:`kestrel.schemas.camera.CameraResult`) to ``camera.results`` and the
frame's per-class counts (and the total, ``objects``) to ``metrics.camera``, where the
telemetry stage windows them (1 s / 10 s / 5 min) like any metric. A frame the
inference group dropped (backpressure, expired) gets a
:class:`kestrel.schemas.camera.FrameDropped` record on ``camera.results`` instead, so
every frame has exactly one record there.

Results, state and progress commit together every ``KESTREL_RESULT_COMMIT_MS``; an
upstream duplicate of a frame (one whose record already went out) produces nothing and
never advances a track twice, and a frame whose detections come after a later frame's
gets a ``frame_dropped`` record (``out_of_order``): see :mod:`tables.camera_tracks`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import cast

import faust
import orjson

from faust_app import app, settings
from kestrel.camera.geometry import crossing, foot, inside
from kestrel.camera.registry import CameraRegistry
from kestrel.camera.tracker import Tracker
from kestrel.errors import InvalidMessage
from kestrel.schemas.camera import (
    AggSummary,
    CameraConfig,
    CameraResult,
    DropReason,
    FrameDetections,
    FrameDropped,
    LineCount,
    ModelResult,
    PostProcessingResult,
    ResultData,
    ResultMetadata,
    TrackedObject,
)
from kestrel.state import Event, StateStore, Task
from kestrel.topics import (
    CAMERA_DETECTIONS,
    CAMERA_FRAMES,
    CAMERA_RESULTS,
    DEADLETTER,
    METRICS_CAMERA,
    STATE_TRACKS,
    ensure_topics,
    faust_topic,
)
from tables import bind
from tables.camera_tracks import CameraTrack, CameraTracks

log = logging.getLogger(__name__)

detections_topic = faust_topic(app, settings, CAMERA_DETECTIONS)
NOT_IN_FIELD = re.compile(r"[^A-Za-z0-9_.:-]")


def field_name(label: str) -> str:
    """A class label as a metric field name ("traffic light" -> "traffic_light")."""
    return NOT_IN_FIELD.sub("_", label)[:64] or "_"


results_topic = faust_topic(app, settings, CAMERA_RESULTS)


class TrackingStage:
    """The tracking tasks, the camera registry (zones, lines) and the counters."""

    def __init__(self) -> None:
        self.registry = CameraRegistry(settings)
        self.store: StateStore[CameraTracks] = StateStore(
            settings,
            app_id=app.conf.id,
            name="tracking",
            changelog=STATE_TRACKS,
            inputs=[CAMERA_DETECTIONS],
            load=CameraTracks.restore,
            persist=self._persist,
            interval_s=settings.result_commit_ms / 1000,
            deadletter=DEADLETTER.name(settings),
        )
        self.frames = 0
        self.dropped: dict[str, int] = {}
        self.duplicates = 0
        self._waited: set[str] = set()
        self._started = False

    async def start(self) -> None:
        """Output topics, the registry and the store; safe to call at every agent start."""
        loop = asyncio.get_running_loop()
        if not self._started:
            await loop.run_in_executor(
                None, ensure_topics, settings, [CAMERA_RESULTS, METRICS_CAMERA, DEADLETTER]
            )
            self._started = True
        await loop.run_in_executor(None, self.registry.start)
        await self.store.start(app.crash)

    async def config(self, camera_id: str) -> CameraConfig | None:
        """The camera's zones and lines; a short grace if the registry lags (see inference)."""
        found = self.registry.get(camera_id)
        if found is None and camera_id not in self._waited:
            self._waited.add(camera_id)  # once per camera: never stall the stream twice
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(None, self.registry.wait_for, camera_id, 2.0)
        return found

    async def handle(self, event: faust.EventT[bytes]) -> None:
        key = (event.message.key or b"").decode(errors="replace")
        config = await self.config(key) if key else None

        def apply(task: Task[CameraTracks], event: Event) -> None:
            self._apply(task, event, config)

        await self.store.process(event, apply)

    def _persist(self, task: Task[CameraTracks]) -> None:
        for key, value in task.model.changes():
            task.put(key, value)

    def _apply(self, task: Task[CameraTracks], event: Event, config: CameraConfig | None) -> None:
        message = event.message
        try:
            frame = FrameDetections.model_validate_json(message.value or b"")
        except ValueError as exc:
            raise InvalidMessage("invalid_field", str(exc)[:500]) from None
        if (message.key or b"").decode(errors="replace") != frame.camera_id:
            raise InvalidMessage("invalid_field", f"key {message.key!r} is not {frame.camera_id!r}")
        state = task.model.get(frame.camera_id)
        verdict = state.verdict(frame.capture_ts_ns, frame.dropped is not None)
        if verdict == "duplicate":
            self.duplicates += 1
            return
        if frame.dropped is not None:
            self._drop(task, frame, state, frame.dropped)
            return
        if verdict == "out_of_order":  # the tracker cannot go back in time
            self._drop(task, frame, state, "out_of_order")
            return
        if config is not None and config.camera_id != frame.camera_id:
            config = None
        self._track(task, frame, state, config)

    def _drop(
        self,
        task: Task[CameraTracks],
        frame: FrameDetections,
        state: CameraTrack,
        reason: DropReason,
    ) -> None:
        record = FrameDropped(
            camera_id=frame.camera_id,
            message_key=frame.camera_id,
            frame_id=frame.frame_id,
            input_stream=CAMERA_FRAMES.name(settings),
            reason=reason,
            capture_ts_ns=frame.capture_ts_ns,
            seq=frame.seq,
        )
        task.send(
            results_topic.get_topic_name(),
            record.model_dump_json().encode(),
            frame.camera_id.encode(),
        )
        state.recorded(frame.capture_ts_ns)
        task.model.put(frame.camera_id, state)
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def _track(
        self,
        task: Task[CameraTracks],
        frame: FrameDetections,
        state: CameraTrack,
        config: CameraConfig | None,
    ) -> None:
        started = time.time_ns()
        tracker = Tracker.from_json(state.tracker)
        before = {t.track_id: foot(t.box) for t in tracker.tracks or []}
        tracks = tracker.match_and_update(
            [tuple(d.box) for d in frame.detections],  # type: ignore[misc]
            [d.score for d in frame.detections],
            [d.label for d in frame.detections],
        )
        zones = config.zones if config else []
        lines = config.lines if config else []
        totals = {name: dict(total) for name, total in state.lines.items()}
        labels: set[str] = set(state.labels)
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
        task.send(
            results_topic.get_topic_name(), result.model_dump_json(by_alias=True).encode(), key
        )
        envelope = {
            "timestamp": frame.capture_ts_ns // 1_000_000,
            "source": f"camera:{frame.camera_id}",
            "type": "metrics",
            # "objects", the total, is always there: a frame with nothing in it still
            # counts (zero), and an envelope needs at least one field.
            "data": {
                **{field_name(k): float(n) for k, n in counts.items()},
                "objects": float(len(objects)),
            },
        }
        task.send(
            METRICS_CAMERA.name(settings),
            orjson.dumps(envelope),
            f"camera:{frame.camera_id}".encode(),
        )
        updated = CameraTrack(
            tracker=tracker.to_json(),
            lines=totals,
            labels=sorted(labels),
            last_ns=state.last_ns,
            recent=state.recent,
            floor_ns=state.floor_ns,
        )
        updated.applied(frame.capture_ts_ns)
        task.model.put(frame.camera_id, updated)
        self.frames += 1

    def stats(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "dropped": dict(self.dropped),
            "duplicates": self.duplicates,
            "dead_letters": dict(self.store.dead_letters),
            "state": dict(self.store.stats),
        }


stage = TrackingStage()
bind(app, stage.store)


@app.agent(detections_topic)
async def track(stream: faust.StreamT[bytes]) -> None:
    """Track every frame's detections; acks follow each commit."""
    manual_acks = cast(faust.Stream[bytes], stream).noack()
    await stage.start()
    async for event in manual_acks.events():
        await stage.handle(event)
