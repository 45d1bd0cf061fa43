"""What a fault run's outputs must be, computed from its inputs alone.

Each check reads a whole output topic (``read_committed``, as a downstream consumer
should) and returns the problems it found, in words; an empty list is a pass.

* :func:`check_windows`: ``metrics.aggregates`` holds exactly the expected windows of
  the collector input, each once, with exact count/sum/min/max/last and quantiles
  within the sketch's 1 %.
* :func:`check_frames`: every frame the cameras sent has exactly one record on
  ``camera.results`` (a result, or a ``frame_dropped`` with its reason) or a dead
  letter; and each result is what the tracker gives when it is run again, here, over
  the detections Kafka holds (duplicates skipped as the stage must): the same track
  ids, ages, boxes and line totals. A track advanced twice, or state lost or restored
  wrong, shows up as a difference.
* :func:`check_camera_windows`: every window of the cameras' object counts that was
  emitted equals what the results say.
* :func:`check_alerts`: ``alerts`` holds exactly what an uninterrupted analytics engine
  raises over the same input, once each.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Message

from kestrel.analytics.config import AnalyticsConfig
from kestrel.analytics.engine import AnalyticsEngine
from kestrel.camera.tracker import Tracker
from kestrel.errors import InvalidMessage
from kestrel.ratelimit import SourceRateLimiter
from kestrel.schemas import check_event_time, parse_envelope, topic_suffix_for
from kestrel.schemas.camera import CameraResult, FrameDetections

SIZES = {"1s": 1_000, "10s": 10_000, "5m": 300_000}


def _key(message: Message) -> str:
    return (message.key() or b"").decode()


def check_windows(aggregates: list[Message], expected: dict[str, dict[str, Any]]) -> list[str]:
    """The expected windows, each emitted once, exact; nothing else of these sources."""
    problems: list[str] = []
    sources = {key.split("|")[0] for key in expected}
    seen: Counter[str] = Counter()
    for message in aggregates:
        key = _key(message)
        if key.split("|")[0] not in sources:
            continue
        seen[key] += 1
        want = expected.get(key)
        if want is None:
            problems.append(f"window {key} emitted but not expected")
            continue
        got = orjson.loads(message.value() or b"{}")
        for stat in ("count", "sum", "min", "max", "last"):
            if got[stat] != want[stat]:
                problems.append(f"window {key}: {stat} {got[stat]} != {want[stat]}")
        numbers = np.asarray(want["values"], dtype=np.float64)
        for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            exact = float(np.quantile(numbers, q, method="lower"))
            if abs(float(got[name]) - exact) > 0.01 * abs(exact) + 1e-9:
                problems.append(f"window {key}: {name} {got[name]} vs exact {exact}")
    missing = sorted(set(expected) - set(seen))
    if missing:
        problems.append(f"{len(missing)} windows never emitted, e.g. {missing[:3]}")
    doubled = sorted(k for k, n in seen.items() if n > 1)
    if doubled:
        problems.append(f"{len(doubled)} windows emitted more than once, e.g. {doubled[:3]}")
    return problems


def check_frames(
    sent: dict[str, str],
    results: list[Message],
    detections: list[Message],
    dead_frames: set[str],
    lines: dict[str, list[tuple[tuple[float, float], tuple[float, float], str]]],
) -> list[str]:
    """Exactly one record per frame sent; results equal to a replay of the tracker.

    ``sent``: frame id -> camera id of every frame the cameras published;
    ``dead_frames``: frame ids that went to the dead letters; ``lines``: each camera's
    counting lines (a, b, name).
    """
    problems: list[str] = []
    records: Counter[str] = Counter()
    parsed: dict[str, dict[str, Any]] = {}
    for message in results:
        record = orjson.loads(message.value() or b"{}")
        frame_id = record["frame_id"]
        records[frame_id] += 1
        parsed[frame_id] = record
    for frame_id in dead_frames:
        records[frame_id] += 1
    unknown = sorted(set(records) - set(sent))
    if unknown:
        problems.append(f"{len(unknown)} records for frames never sent, e.g. {unknown[:3]}")
    lost = sorted(set(sent) - set(records))
    if lost:
        problems.append(f"{len(lost)} frames sent have no record (lost uncounted): {lost[:3]}")
    doubled = sorted(f for f, n in records.items() if n > 1)
    if doubled:
        problems.append(f"{len(doubled)} frames have more than one record: {doubled[:3]}")
    problems += _replay_tracker(detections, parsed, lines)
    return problems


def _replay_tracker(
    detections: list[Message],
    results: dict[str, dict[str, Any]],
    lines: dict[str, list[tuple[tuple[float, float], tuple[float, float], str]]],
) -> list[str]:
    """Run the tracker over the detections in partition order; compare with results."""
    from kestrel.camera.geometry import crossing, foot

    problems: list[str] = []
    trackers: dict[str, Tracker] = {}
    last_ns: dict[str, int] = defaultdict(lambda: -1)
    totals: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    ordered = sorted(detections, key=lambda m: (m.partition() or 0, m.offset() or 0))
    for message in ordered:
        try:
            frame = FrameDetections.model_validate_json(message.value() or b"")
        except ValueError:
            continue  # the stage dead-letters it (checked with the dead letters)
        if (message.key() or b"").decode(errors="replace") != frame.camera_id:
            continue
        camera = frame.camera_id
        if frame.dropped is not None or frame.capture_ts_ns <= last_ns[camera]:
            continue  # a drop, or a duplicate: the stage must skip it as well
        last_ns[camera] = frame.capture_ts_ns
        tracker = Tracker.from_json(trackers[camera].to_json()) if camera in trackers else Tracker()
        before = {t.track_id: foot(t.box) for t in tracker.tracks or []}
        tracks = tracker.match_and_update(
            [tuple(d.box) for d in frame.detections],  # type: ignore[misc]
            [d.score for d in frame.detections],
            [d.label for d in frame.detections],
        )
        trackers[camera] = tracker
        camera_totals = totals[camera]
        for _, _, name in lines.get(camera, []):
            camera_totals.setdefault(name, {"in": 0, "out": 0})
        for track in tracks:
            previous = before.get(track.track_id)
            if previous is None:
                continue
            for a, b, name in lines.get(camera, []):
                direction = crossing(a, b, previous, foot(track.box))
                if direction is not None:
                    camera_totals[name][direction] += 1
        record = results.get(frame.frame_id)
        if record is None or record.get("kind") != "camera_result":
            problems.append(
                f"{frame.frame_id}: detected, but its record is {record and record['kind']}"
            )
            continue
        result = CameraResult.model_validate(record)
        got = [
            (o.track_id, o.age, [round(v, 3) for v in o.box])
            for o in result.data.post_processing_result.tracked_objects
        ]
        want = [(t.track_id, t.age, [round(v, 3) for v in t.box]) for t in tracks]
        if got != want:
            problems.append(f"{frame.frame_id}: tracks {got} but the replay gives {want}")
        crossings = {
            name: {"in": count.in_, "out": count.out}
            for name, count in result.data.post_processing_result.agg_summary.line_crossings.items()
        }
        if crossings != camera_totals:
            problems.append(f"{frame.frame_id}: line totals {crossings} != replay {camera_totals}")
    return problems[:20]


def check_camera_windows(aggregates: list[Message], results: list[Message]) -> list[str]:
    """Each emitted window of a camera's object count equals the results' counts."""
    per_window: dict[str, list[float]] = defaultdict(list)
    for message in results:
        record = orjson.loads(message.value() or b"{}")
        if record.get("kind") != "camera_result":
            continue
        ms = record["data"]["metadata"]["capture_ts_ns"] // 1_000_000
        objects = float(len(record["data"]["post_processing_result"]["tracked_objects"]))
        for window, size in SIZES.items():
            per_window[f"camera:{record['camera_id']}|objects|{window}|{ms - ms % size}"].append(
                objects
            )
    problems = []
    checked = 0
    for message in aggregates:
        key = _key(message)
        if not key.startswith("camera:") or "|objects|" not in key:
            continue
        got = orjson.loads(message.value() or b"{}")
        want = per_window.get(key, [])
        checked += 1
        if (got["count"], got["sum"]) != (len(want), float(sum(want))):
            problems.append(
                f"{key}: count/sum {got['count']}/{got['sum']} != {len(want)}/{sum(want)}"
            )
    if checked == 0:
        problems.append("no window of the cameras' counts was emitted")
    return problems[:20]


def expected_alerts(
    rules: AnalyticsConfig,
    inputs: Iterable[Message],
    max_hz: float,
    max_future_ms: int,
    namespace: str,
    analyses: list[tuple[str, int, dict[str, Any]]] | None = None,
) -> list[tuple[str, str, int]]:
    """What an uninterrupted engine raises over the inputs (per partition, in order),
    admitting what the analytics stage admits; its temporal analyses into ``analyses``."""
    engine = AnalyticsEngine(rules, {})
    limiter = SourceRateLimiter(max_hz)
    alerts: list[tuple[str, str, int]] = []
    now_ms = int(time.time() * 1000)
    for message in sorted(
        inputs, key=lambda m: (m.topic() or "", m.partition() or 0, m.offset() or 0)
    ):
        try:
            envelope = parse_envelope(message.value() or b"")
            if f"{namespace}.{topic_suffix_for(envelope.source)}" != message.topic():
                continue
            check_event_time(envelope, now_ms, max_future_ms)
        except InvalidMessage:
            continue
        ts = [envelope.timestamp] if envelope.samples is None else envelope.samples.timestamp
        if not limiter.admit(envelope.source, ts):
            continue
        if envelope.samples is None:
            columns: dict[str, list[float | None]] = {k: [v] for k, v in envelope.data.items()}
        else:
            columns = dict(envelope.samples.data)
        for alert in engine.observe(envelope.source, ts, columns):
            alerts.append((alert.alert_id, alert.state, alert.timestamp))
        for analysis in engine.take_analyses():
            if analyses is not None:
                record = analysis.model_dump(mode="json")
                analyses.append((analysis.key, analysis.timestamp, record))
    return alerts


def check_temporal(got: list[Message], want: list[tuple[str, int, dict[str, Any]]]) -> list[str]:
    """``analytics.temporal``, per field in order, equals the uninterrupted engine's:
    each analysis once, every figure the same."""
    by_key: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for message in sorted(got, key=lambda m: (m.partition() or 0, m.offset() or 0)):
        record = orjson.loads(message.value() or b"{}")
        by_key[(message.key() or b"").decode()].append((record["timestamp"], record))
    expected: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for key, timestamp, record in want:
        expected[key].append((timestamp, record))
    problems = []
    if not any(r["regime"] for _, _, r in want):
        problems.append("no regime was read: the temporal check would prove little")
    for key in sorted(set(by_key) | set(expected)):
        if by_key.get(key, []) != expected.get(key, []):
            mine = [t for t, _ in by_key.get(key, [])]
            theirs = [t for t, _ in expected.get(key, [])]
            problems.append(f"analyses {key}: got {mine[:6]}..., expected {theirs[:6]}...")
    return problems[:20]


def check_alerts(got: list[Message], want: list[tuple[str, str, int]]) -> list[str]:
    """The alerts topic, per alert id in order, equals the uninterrupted engine's."""
    by_id: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for message in sorted(got, key=lambda m: (m.partition() or 0, m.offset() or 0)):
        alert = orjson.loads(message.value() or b"{}")
        by_id[alert["alert_id"]].append((alert["state"], alert["timestamp"]))
    expected: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for alert_id, state, ts in want:
        expected[alert_id].append((state, ts))
    problems = []
    if not want:
        problems.append("the input raised no alert: the check would prove nothing")
    for alert_id in sorted(set(by_id) | set(expected)):
        if by_id.get(alert_id, []) != expected.get(alert_id, []):
            problems.append(
                f"alerts {alert_id}: got {by_id.get(alert_id, [])[:4]}..., "
                f"expected {expected.get(alert_id, [])[:4]}..."
            )
    return problems[:20]
