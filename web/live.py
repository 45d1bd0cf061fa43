"""The hot cache that also publishes each change to the hub's channels.

Channel and key of each kind of update (a client keeps the latest per key):

=====================  ==========================  =====================================
channel                key                          payload
=====================  ==========================  =====================================
``metrics:<source>``   ``latest``                   latest values and running 1 s windows
``metrics:<source>``   ``agg:<field>:<window>``     a final window aggregate
``metrics:<source>``   ``energy``                   a model's energy mapping
``alerts``             ``<alert_id>``               an alert's start or end
``cameras``            ``<camera_id>``              a camera's summary (counts, tracks)
``camera:<id>``        ``result``                   the camera's latest result
``analytics``          ``<source>|<field>``         a field's regime and pattern matches
=====================  ==========================  =====================================
"""

from __future__ import annotations

from typing import Any

from kestrel.schemas import Alert, MetricEnvelope, WindowAggregate
from kestrel.schemas.camera import CameraResult
from kestrel.schemas.temporal import TemporalAnalysis
from web.hot_cache import HotCache
from web.hub import Hub


def camera_summary(result: CameraResult, dropped: dict[str, int] | None = None) -> dict[str, Any]:
    summary = result.data.post_processing_result.agg_summary
    return {
        "camera_id": result.camera_id,
        "frame_id": result.frame_id,
        "capture_ts_ns": result.data.metadata.capture_ts_ns,
        "counts": summary.counts,
        "active_tracks": summary.active_tracks,
        "processing_ms": result.data.processing_time * 1000,
        "dropped_frames": dict(dropped or {}),
    }


class LiveCache(HotCache):
    def __init__(
        self, hub: Hub, grace_ms: int = 1_000, max_sources: int = 1000, max_fields: int = 256
    ) -> None:
        super().__init__(grace_ms, max_sources, max_fields)
        self.hub = hub

    def source_state(self, source: str) -> dict[str, Any]:
        latest = self.latest.get(source, {})
        return {
            "latest": {k: {"timestamp": t, "value": v} for k, (t, v) in latest.items()},
            "running": self.running(source, window="1s"),
        }

    def add_samples(self, envelope: MetricEnvelope) -> None:
        super().add_samples(envelope)
        channel = f"metrics:{envelope.source}"
        if self.hub.wants(channel):
            self.hub.publish(channel, "latest", self.source_state(envelope.source))

    def add_aggregate(self, aggregate: WindowAggregate) -> None:
        super().add_aggregate(aggregate)
        key = f"agg:{aggregate.field}:{aggregate.window}"
        self.hub.publish(f"metrics:{aggregate.source}", key, aggregate.model_dump())

    def add_energy(self, envelope: MetricEnvelope) -> None:
        super().add_energy(envelope)
        if envelope.source in self.energy:
            self.hub.publish(f"metrics:{envelope.source}", "energy", self.energy[envelope.source])

    def add_alert(self, alert: Alert) -> None:
        super().add_alert(alert)
        self.hub.publish("alerts", alert.alert_id, alert.model_dump(mode="json"))

    def add_result(self, result: CameraResult) -> None:
        super().add_result(result)
        summary = camera_summary(result, self.dropped.get(result.camera_id))
        self.hub.publish("cameras", result.camera_id, summary)
        self.hub.publish(f"camera:{result.camera_id}", "result", result.model_dump(by_alias=True))

    def add_temporal(self, analysis: TemporalAnalysis) -> None:
        super().add_temporal(analysis)
        if self.hub.wants("analytics"):
            self.hub.publish("analytics", analysis.key, analysis.model_dump(mode="json"))

    def backfill(self, channel: str) -> dict[str, Any]:
        """What a client gets when it subscribes to ``channel``, before live updates."""
        if channel == "analytics":
            return {key: a.model_dump(mode="json") for key, a in sorted(self.temporal.items())}
        if channel == "alerts":
            return {
                "active": [a.model_dump(mode="json") for a in self.active_alerts.values()],
                "recent": [a.model_dump(mode="json") for a in list(self.alert_history)[-50:]],
            }
        if channel == "cameras":
            return {
                cid: camera_summary(r, self.dropped.get(cid)) for cid, r in self.results.items()
            }
        if channel.startswith("camera:"):
            result = self.results.get(channel.removeprefix("camera:"))
            return {"result": None if result is None else result.model_dump(by_alias=True)}
        if channel.startswith("metrics:"):
            source = channel.removeprefix("metrics:")
            return self.snapshot(source, window="1s")  # the page's live view: 1 s windows
        return {}
