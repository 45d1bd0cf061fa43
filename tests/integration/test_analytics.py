"""The analytics worker on the real broker: alerts start and end, energy, restarts.

The worker runs as a user runs it (``faust -A faust_app:analytics worker``), with a
rules file of the test's own; inputs are known sample sequences, so every alert's
value, times and evidence are known exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from kestrel.broker import LocalKafka
from kestrel.schemas import Alert
from kestrel.schemas.temporal import TemporalAnalysis
from kestrel.settings import Settings
from kestrel.topics import (
    ALERTS,
    ANALYTICS_TEMPORAL,
    METRICS_ENERGY,
    METRICS_MODEL,
    METRICS_SYSTEM,
    METRICS_UI,
)
from tests.conftest import settings_for
from tests.integration.telemetry_helpers import Row, envelope, produce
from tests.kafka_helpers import FaustWorker, read_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RULES = """
rules:
  - name: frame_budget_breach
    source: ui
    check: frame_time_ms <= 16.67 always
  - name: cpu_recovers
    source: system
    check: cpu_percent > 90 is followed by cpu_percent < 70 within 5 s
    severity: critical
"""
# An hour ago, to the second: event times within the topics' retention (7 days). The
# records keep their event time, and Kafka deletes records older than the retention at
# its next check; a fixed date in 2023 had them deleted before the test read them.
T0 = (time.time_ns() // 1_000_000_000 - 3_600) * 1_000


def analytics_settings(kafka: LocalKafka, tmp_path: Path) -> Settings:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return settings_for(kafka, tmp_path, rules_path=rules)


def ui_frames(start_ms: int, frame_times: list[float]) -> list[Row]:
    return [Row("ui", start_ms + 16 * i, {"frame_time_ms": t}) for i, t in enumerate(frame_times)]


def send(settings: Settings, topic: str, rows: list[Row], per_message: int = 6) -> None:
    messages = [
        (rows[0].source.encode(), envelope(rows[i : i + per_message]))
        for i in range(0, len(rows), per_message)
    ]
    produce(settings, topic, messages)


def alerts_until(settings: Settings, n: int, state: str | None = None) -> list[Alert]:
    """Read alerts until ``n`` of them (in ``state``, if given) have come."""

    def enough(msgs: list[Message]) -> bool:
        states = [Alert.model_validate_json(m.value() or b"").state for m in msgs]
        return sum(state is None or s == state for s in states) >= n

    messages = read_until(settings, ALERTS.name(settings), enough, timeout_s=60)
    alerts = [Alert.model_validate_json(m.value() or b"") for m in messages]
    for message, alert in zip(messages, alerts, strict=True):
        assert message.key() == alert.alert_id.encode()
    return alerts


@pytest.fixture
def analytics(kafka: LocalKafka, tmp_path: Path) -> Iterator[tuple[Settings, FaustWorker]]:
    """An analytics worker (``faust -A faust_app:analytics worker``) with the test's rules."""
    settings = analytics_settings(kafka, tmp_path)
    worker = FaustWorker(settings, tmp_path / "analytics.log", app="faust_app:analytics")
    worker.start()
    try:
        yield settings, worker
    finally:
        worker.stop()


def wait_for_commit(
    settings: Settings, group: str, topic: str, partition: int, offset: int
) -> None:
    """Return once ``group`` has committed past ``offset`` of ``topic[partition]``."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group})
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            (committed,) = consumer.committed([TopicPartition(topic, partition)], timeout=10)
            if committed.offset > offset:
                return
            time.sleep(0.2)  # polling the group's committed offset for a condition
    finally:
        consumer.close()
    raise AssertionError(f"{group} did not commit {topic}[{partition}] past {offset} in 30 s")


def test_rules_raise_and_clear_alerts_with_their_evidence(
    analytics: tuple[Settings, FaustWorker],
) -> None:
    settings, _worker = analytics
    # UI: two slow frames, then 1.1 s of good ones: one alert, then its end.
    frames = [10.0] * 10 + [25.0, 30.0] + [10.0] * 70
    send(settings, METRICS_UI.name(settings), ui_frames(T0, frames))
    # System at 10 Hz: 95 % at T0, stuck at 85 % past the 5 s deadline, then 60 %.
    cpu = [95.0] + [85.0] * 55 + [60.0] * 5
    rows = [Row("system", T0 + 100 * i, {"cpu_percent": v}) for i, v in enumerate(cpu)]
    send(settings, METRICS_SYSTEM.name(settings), rows, per_message=1)

    alerts = {(a.alert_id, a.state): a for a in alerts_until(settings, 4)}
    assert len(alerts) == 4, sorted(alerts)

    budget = alerts[("frame_budget_breach|ui|frame_time_ms", "active")]
    assert (budget.value, budget.timestamp, budget.raised_at_ms) == (25.0, T0 + 160, T0 + 160)
    assert budget.evidence["condition"] == "frame_time_ms <= 16.67"
    assert budget.kind == "temporal" and budget.severity == "warning"
    ended = alerts[("frame_budget_breach|ui|frame_time_ms", "cleared")]
    # The last slow frame is at +176; the first good frame 1 s after it is at +1184.
    assert (ended.timestamp, ended.violations, ended.value) == (T0 + 1184, 2, 10.0)
    assert (ended.window.start_ms, ended.window.end_ms) == (T0 + 160, T0 + 1184)

    late = alerts[("cpu_recovers|system|cpu_percent", "active")]
    # Triggered at T0; the first sample past T0 + 5 s is at +5100, still at 85 %.
    assert (late.timestamp, late.value, late.severity) == (T0 + 5100, 85.0, "critical")
    assert late.evidence["triggered_at_ms"] == T0
    assert late.evidence["deadline_ms"] == T0 + 5000
    assert late.evidence["trigger_value"] == 95.0
    recovered = alerts[("cpu_recovers|system|cpu_percent", "cleared")]
    assert (recovered.timestamp, recovered.value) == (T0 + 5600, 60.0)


def test_an_alert_raised_before_a_kill_is_cleared_after_the_restart(
    analytics: tuple[Settings, FaustWorker],
) -> None:
    settings, worker = analytics
    topic = METRICS_UI.name(settings)
    ((partition, offset),) = produce(
        settings, topic, [(b"ui", envelope(ui_frames(T0, [10.0, 40.0, 10.0])))]
    )
    (raised,) = alerts_until(settings, 1)
    assert raised.state == "active"
    # Once the message is committed it is never analysed again: an end of the
    # alert after the kill can only come from the table the new worker recovered.
    wait_for_commit(settings, settings.app_id("analytics"), topic, partition, offset)
    worker.kill()
    worker.start()
    send(settings, topic, ui_frames(T0 + 2_000, [10.0] * 3))
    alerts = alerts_until(settings, 1, state="cleared")
    assert [a.state for a in alerts] == ["active", "cleared"]
    cleared = alerts[1:]
    assert cleared[0].alert_id == "frame_budget_breach|ui|frame_time_ms"
    assert (cleared[0].raised_at_ms, cleared[0].timestamp) == (T0 + 16, T0 + 2_000)


def test_model_messages_get_their_energy_mapping(analytics: tuple[Settings, FaustWorker]) -> None:
    settings, _worker = analytics
    data: dict[str, float | None] = {
        "tokens_per_second": 50.0,
        "entropy_bits": 7.5,
        "gpu_utilization": 80.0,
    }
    send(settings, METRICS_MODEL.name(settings), [Row("model:llm", T0, data)])
    (message,) = read_until(
        settings, METRICS_ENERGY.name(settings), lambda msgs: len(msgs) >= 1, timeout_s=60
    )
    record: dict[str, Any] = orjson.loads(message.value() or b"")
    assert message.key() == b"model:llm"
    assert record["timestamp"] == T0 and record["data"] == data
    assert record["energy_visual"] == {
        "ribbon_width": 0.5,
        "particle_density": 0.5,
        "animation_speed": 0.125,
        "lightning_intensity": 0.8,
    }


REGIME_RULES = """
regimes:
  window: 60
  every_s: 5
  confirm: 3
  settle_s: 20
  watch:
    - source: "model:regime"
      fields: [tokens_per_second]
"""


def test_a_field_that_starts_to_oscillate_raises_a_regime_change_with_its_evidence(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    """Steady tokens/s for 90 s, then an 8 s oscillation: fixed point -> periodic."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(REGIME_RULES)
    settings = settings_for(kafka, tmp_path, rules_path=rules)
    worker = FaustWorker(settings, tmp_path / "analytics.log", app="faust_app:analytics")
    worker.start()
    try:
        rng = np.random.default_rng(5)
        steady = [40.0 + rng.normal(0, 2.0) for _ in range(90)]
        swinging = [40.0 + 15 * math.sin(2 * math.pi * s / 8) for s in range(120)]
        rows = [  # 10 samples a second; each second's mean is the value above
            Row("model:regime", T0 + 1000 * s + 100 * i, {"tokens_per_second": v})
            for s, v in enumerate([*steady, *swinging])
            for i in range(10)
        ]
        send(settings, METRICS_MODEL.name(settings), rows, per_message=10)
        (raised,) = [a for a in alerts_until(settings, 1, "active") if a.kind == "regime"]
        assert (raised.rule, raised.field) == ("regime_change", "tokens_per_second")
        assert (raised.evidence["before"], raised.evidence["after"]) == ("fixed_point", "periodic")
        assert abs(raised.evidence["period_s"] - 8) < 0.5
        assert T0 + 90_000 < raised.timestamp <= T0 + 210_000
        ended = alerts_until(settings, 1, "cleared")
        (cleared,) = [a for a in ended if a.kind == "regime" and a.state == "cleared"]
        assert cleared.timestamp - raised.timestamp >= 20_000  # the new regime held settle_s
        assert cleared.evidence["regime"] == "periodic"

        def periodic(msgs: list[Message]) -> bool:
            last = TemporalAnalysis.model_validate_json(msgs[-1].value() or b"") if msgs else None
            return last is not None and last.regime is not None and last.regime.kind == "periodic"

        topic = ANALYTICS_TEMPORAL.name(settings)
        records = read_until(settings, topic, periodic, timeout_s=60)
        assert {m.key() for m in records} == {b"model:regime|tokens_per_second"}
        last = TemporalAnalysis.model_validate_json(records[-1].value() or b"")
        assert last.window_s == 60 and last.regime is not None
        assert last.regime.period_s is not None and abs(last.regime.period_s - 8) < 0.5
    finally:
        worker.stop()
