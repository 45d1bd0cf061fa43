"""The hot cache: what a dashboard needs on connect, without replaying Kafka.

It holds, for every source and field:

* the **final aggregates** of the last 5 minutes of event time, per window size (from
  ``metrics.aggregates``: at most 300 one-second, 30 ten-second and 2 five-minute
  windows per field);
* the **running value** of each open 1 s / 10 s / 5 min window, computed from the raw
  samples with the stream worker's own window code (:mod:`tables.windows`), so it is
  readable while the window is open, as the worker's own state is;
* the **latest raw value** of each field, with its timestamp;

and the active alerts, the last 200 alert records, each model's latest energy
mapping, each watched field's latest temporal analysis (regime and pattern matches),
and each camera's latest result. It is plain memory owned by one process
(the web server), filled by :class:`web.feed.HotCacheFeed`; its size is bounded by
the number of (source, field) pairs and cameras, never by time. Producers choose
source and field names, so both are capped: past ``max_sources`` the source updated
least recently is forgotten (a dashboard shows what is live), and a source's fields
past ``max_fields`` are left out (counted in ``refused``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from kestrel.schemas import Alert, MetricEnvelope, WindowAggregate
from kestrel.schemas.camera import CameraResult, FrameDropped
from kestrel.schemas.temporal import TemporalAnalysis
from tables.windows import PartitionWindows, SampleBatch, WindowKey, default_specs

HORIZON_MS = 300_000
ALERT_HISTORY = 200
WINDOW_SIZES_MS = {"1s": 1_000, "10s": 10_000, "5m": 300_000}


@dataclass
class _Series:
    """The final aggregates of one (source, field, window size), oldest first."""

    aggregates: deque[WindowAggregate] = field(default_factory=deque)

    def add(self, aggregate: WindowAggregate) -> None:
        items = self.aggregates
        if items and aggregate.window_start_ms <= items[-1].window_start_ms:
            # A re-emission (after a worker restart) or an older window: keep order.
            kept = [a for a in items if a.window_start_ms != aggregate.window_start_ms]
            kept.append(aggregate)
            kept.sort(key=lambda a: a.window_start_ms)
            items.clear()
            items.extend(kept)
        else:
            items.append(aggregate)
        newest_end = items[-1].window_end_ms
        while len(items) > 1 and items[0].window_end_ms <= newest_end - HORIZON_MS:
            items.popleft()


class HotCache:
    """Last 5 minutes of aggregates, running windows and latest values; see the module."""

    def __init__(self, grace_ms: int = 1_000, max_sources: int = 1000, max_fields: int = 256):
        self.max_sources = max_sources
        self.max_fields = max_fields
        self.refused = 0  # fields of messages left out: over max_fields
        self._touched: dict[str, None] = {}  # sources, least recently updated first
        self._series_keys: dict[str, set[tuple[str, str, str]]] = {}
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._running: dict[str, PartitionWindows] = {}
        self._grace_ms = grace_ms
        self.latest: dict[str, dict[str, tuple[int, float]]] = {}
        self.energy: dict[str, dict[str, Any]] = {}
        self.active_alerts: dict[str, Alert] = {}
        self.alert_history: deque[Alert] = deque(maxlen=ALERT_HISTORY)
        self.results: dict[str, CameraResult] = {}
        #: Each watched field's latest temporal analysis, by ``source|field``.
        self.temporal: dict[str, TemporalAnalysis] = {}
        #: Frames that got no result, per camera and reason (frame_dropped records).
        self.dropped: dict[str, dict[str, int]] = {}

    # Feeding ---------------------------------------------------------------------------
    def _touch(self, source: str) -> None:
        """``source`` was just updated; past the cap, forget the stalest source."""
        self._touched.pop(source, None)
        self._touched[source] = None
        if len(self._touched) > self.max_sources:
            self._forget(next(iter(self._touched)))

    def _forget(self, source: str) -> None:
        self._touched.pop(source, None)
        self.latest.pop(source, None)
        self._running.pop(source, None)
        self.energy.pop(source, None)
        for temporal_key in [k for k in self.temporal if k.startswith(f"{source}|")]:
            del self.temporal[temporal_key]
        for key in self._series_keys.pop(source, set()):
            self._series.pop(key, None)

    def add_aggregate(self, aggregate: WindowAggregate) -> None:
        key = (aggregate.source, aggregate.field, aggregate.window)
        series = self._series.get(key)
        if series is None:
            keys = self._series_keys.setdefault(aggregate.source, set())
            if len(keys) >= self.max_fields * len(WINDOW_SIZES_MS):
                self.refused += 1
                return
            keys.add(key)
            series = self._series[key] = _Series()
        series.add(aggregate)
        self._touch(aggregate.source)

    def add_samples(self, envelope: MetricEnvelope) -> None:
        """A collector message: latest values, and the running windows."""
        batch = SampleBatch.from_envelope(envelope)
        self._touch(envelope.source)
        latest = self.latest.setdefault(envelope.source, {})
        known = set(latest)
        if len(known.union(batch.fields)) > self.max_fields:
            kept = {n: c for n, c in batch.fields.items() if n in known}
            room = self.max_fields - len(known)
            for name in [n for n in batch.fields if n not in known][:room]:
                kept[name] = batch.fields[name]
            self.refused += len(batch.fields) - len(kept)
            batch = SampleBatch(batch.source, batch.timestamps, kept)
        timestamps = batch.timestamps.tolist()
        for name, column in batch.fields.items():
            for t, value in zip(reversed(timestamps), reversed(column.tolist()), strict=True):
                if value == value:  # not NaN: the latest known value of this field
                    if name not in latest or latest[name][0] <= t:
                        latest[name] = (t, value)
                    break
        windows = self._running.get(envelope.source)
        if windows is None:
            windows = self._running[envelope.source] = PartitionWindows(
                0, default_specs(self._grace_ms)
            )
        windows.apply(batch)  # samples late for the cache are left out of it
        windows.close_due()  # the final values come from metrics.aggregates
        windows.take_dirty()

    def add_energy(self, envelope: MetricEnvelope) -> None:
        if envelope.energy_visual is not None:
            self._touch(envelope.source)
            self.energy[envelope.source] = {
                "timestamp": envelope.timestamp,
                **envelope.energy_visual.model_dump(),
            }

    def add_temporal(self, analysis: TemporalAnalysis) -> None:
        """A field's regime and matches (the analytics worker's; bounded by its watches)."""
        current = self.temporal.get(analysis.key)
        if current is None or current.timestamp <= analysis.timestamp:
            self.temporal[analysis.key] = analysis
        self._touch(analysis.source)

    def add_result(self, result: CameraResult) -> None:
        """A camera's latest result (by capture time)."""
        current = self.results.get(result.camera_id)
        capture = result.data.metadata.capture_ts_ns
        if current is None or current.data.metadata.capture_ts_ns <= capture:
            self.results[result.camera_id] = result

    def add_drop(self, drop: FrameDropped) -> None:
        reasons = self.dropped.setdefault(drop.camera_id, {})
        reasons[drop.reason] = reasons.get(drop.reason, 0) + 1

    def add_alert(self, alert: Alert) -> None:
        self.alert_history.append(alert)
        if alert.state == "active":
            self.active_alerts[alert.alert_id] = alert
        else:
            self.active_alerts.pop(alert.alert_id, None)

    # Reading ---------------------------------------------------------------------------
    def sources(self) -> list[str]:
        names = {source for source, _, _ in self._series} | set(self.latest)
        return sorted(names)

    def fields(self, source: str) -> list[str]:
        names = {f for s, f, _ in self._series if s == source} | set(self.latest.get(source, {}))
        return sorted(names)

    def aggregates(
        self,
        source: str,
        field_name: str,
        window: str = "1s",
        since_ms: int | None = None,
    ) -> list[WindowAggregate]:
        """Final aggregates of the last 5 minutes, oldest first, ending after ``since_ms``."""
        if window not in WINDOW_SIZES_MS:
            raise ValueError(f"window must be one of {sorted(WINDOW_SIZES_MS)}, not {window!r}")
        series = self._series.get((source, field_name, window))
        if series is None:
            return []
        return [a for a in series.aggregates if since_ms is None or a.window_end_ms > since_ms]

    def running(
        self, source: str, field_name: str | None = None, window: str | None = None
    ) -> list[dict[str, Any]]:
        """The open windows of a source (one field or all, one window size or all)."""
        windows = self._running.get(source)
        if windows is None:
            return []
        rows = []
        for key, state in sorted(windows.open_windows(source).items(), key=_order):
            if (field_name is None or key.field == field_name) and (
                window is None or key.window == window
            ):
                rows.append(
                    {
                        "source": key.source,
                        "field": key.field,
                        "window": key.window,
                        "window_start_ms": key.start_ms,
                        "window_end_ms": key.start_ms + WINDOW_SIZES_MS[key.window],
                        **state.stats(),
                    }
                )
        return rows

    def snapshot(self, source: str, window: str | None = None) -> dict[str, Any]:
        """Everything about one source, as a dashboard's backfill (open windows of one size
        or all)."""
        return {
            "source": source,
            "latest": {
                k: {"timestamp": t, "value": v} for k, (t, v) in self.latest.get(source, {}).items()
            },
            "running": self.running(source, window=window),
            "aggregates": {
                window: {
                    name: [a.model_dump() for a in self.aggregates(source, name, window)]
                    for name in self.fields(source)
                }
                for window in WINDOW_SIZES_MS
            },
            "energy": self.energy.get(source),
        }


def _order(item: tuple[WindowKey, Any]) -> tuple[str, int, int]:
    key = item[0]
    return key.field, WINDOW_SIZES_MS[key.window], key.start_ms
