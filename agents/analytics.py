"""Analytics stage: collector messages in; alerts and the energy mapping out.

Its own Faust app and consumer group (``faust -A faust_app:analytics worker``), so
rules never slow the windows down and each scales on its own. Per message: validate,
apply the same 60 Hz budget as the stream stage (a message that stage refuses is not
analysed either), run every check of the rules file
(:class:`kestrel.analytics.engine.AnalyticsEngine`) and publish alert starts and
ends to ``alerts``; for a model source, publish the latest sample with its
``energy_visual`` to ``metrics.energy``.

Invalid messages are the stream stage's to dead-letter; this stage counts and skips
them. Alerts are at least once: after a crash the messages since the last commit
are analysed again, which can repeat an alert record (same ``alert_id`` and
``timestamp``). Rule state (pending deadlines, baselines) lives in the worker; active
alerts live in a table (:mod:`tables.alert_state`), so they are cleared after a
restart or a rebalance.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from faust_app import analytics as app
from faust_app import settings
from kestrel.analytics.config import load_rules
from kestrel.analytics.energy import energy_visual
from kestrel.analytics.engine import AnalyticsEngine
from kestrel.errors import InvalidMessage
from kestrel.producer import KestrelProducer
from kestrel.ratelimit import SourceRateLimiter
from kestrel.schemas import MetricEnvelope, parse_envelope, topic_suffix_for
from kestrel.stats import write_stats
from kestrel.topics import ALERTS, COLLECTOR_TOPICS, METRICS_ENERGY, ensure_topics, faust_topic
from tables.alert_state import active_alerts

log = logging.getLogger(__name__)

collector_topics = faust_topic(app, settings, *COLLECTOR_TOPICS)
alerts_topic = faust_topic(app, settings, ALERTS)
energy_topic = faust_topic(app, settings, METRICS_ENERGY)
TOPIC_SUFFIX = {spec.name(settings): spec.suffix for spec in COLLECTOR_TOPICS}


class AnalyticsStage:
    """The engine, the producer of its outputs, and its counters."""

    def __init__(self) -> None:
        self.rules = load_rules(settings.rules_path)
        self.engine = AnalyticsEngine(self.rules, active_alerts)
        self.limiter = SourceRateLimiter(settings.source_max_hz)
        self._producer: KestrelProducer | None = None
        self.messages = 0
        self.skipped: dict[str, int] = {}
        self.alerts: dict[str, int] = {"active": 0, "cleared": 0}

    async def start(self) -> None:
        if self._producer is None:
            outputs = [ALERTS, METRICS_ENERGY]
            await asyncio.get_running_loop().run_in_executor(None, ensure_topics, settings, outputs)
            self._producer = KestrelProducer(settings, **{"linger.ms": 5})
            log.info(
                "analytics: %d temporal rules, %d jank, %d degradation, %d pattern watches",
                len(self.rules.rules),
                len(self.rules.jank),
                len(self.rules.degradation),
                len(self.rules.patterns.watch),
            )

    @property
    def producer(self) -> KestrelProducer:
        assert self._producer is not None, "AnalyticsStage.start() was not awaited"
        return self._producer

    def handle(self, event: faust.EventT[bytes]) -> int:
        """Analyse one message; queue its alerts and energy record. Returns the alerts."""
        envelope = self._admit(event)
        if envelope is None:
            return 0
        self.messages += 1
        if envelope.samples is None:
            timestamps = [envelope.timestamp]
            columns: dict[str, list[float | None]] = {k: [v] for k, v in envelope.data.items()}
        else:
            timestamps, columns = envelope.samples.timestamp, envelope.samples.data
        alerts = self.engine.observe(envelope.source, timestamps, columns)
        for alert in alerts:
            self.alerts[alert.state] += 1
            log.info("alert %s %s: %s = %s", alert.state, alert.alert_id, alert.field, alert.value)
            self.producer.send(
                alerts_topic.get_topic_name(),
                alert.model_dump_json().encode(),
                alert.alert_id.encode(),
                timestamp_ms=alert.timestamp,
            )
        if envelope.source.startswith("model:"):
            energy = envelope.model_copy(
                update={"samples": None, "energy_visual": energy_visual(envelope.data)}
            )
            self.producer.send(
                energy_topic.get_topic_name(),
                energy.model_dump_json(exclude_none=True).encode(),
                envelope.source.encode(),
                timestamp_ms=envelope.timestamp,
            )
        return len(alerts)

    def _admit(self, event: faust.EventT[bytes]) -> MetricEnvelope | None:
        """The message's envelope, or None (counted) if the stream stage refuses it."""
        try:
            envelope = parse_envelope(event.value)
        except InvalidMessage as exc:
            self._skip(exc.reason)
            return None
        if topic_suffix_for(envelope.source) != TOPIC_SUFFIX[event.message.topic]:
            self._skip("wrong_topic")
            return None
        timestamps = (
            [envelope.timestamp] if envelope.samples is None else envelope.samples.timestamp
        )
        if not self.limiter.admit(envelope.source, timestamps):
            self._skip("rate_limited")
            return None
        return envelope

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def stats(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "skipped": dict(self.skipped),
            "alerts": dict(self.alerts),
            "active_alerts": len(active_alerts),
        }


stage = AnalyticsStage()


@app.agent(collector_topics)
async def analyse(stream: faust.StreamT[bytes]) -> None:
    """Run the rules on every collector message; alerts are durable before the ack."""
    await stage.start()
    async for event in stream.events():
        if stage.handle(event):
            # Alerts are rare: waiting for them before Faust acks the message costs
            # little and loses none to a crash. Energy records are a latest-value
            # stream; a crash can lose the few still queued (5 ms of them).
            await stage.producer.flush_async()


@app.timer(1.0)  # type: ignore[untyped-decorator]  # Faust's timer is untyped
async def report_stats() -> None:
    """Write the stage's counters where KESTREL_STATS_PATH says, once a second."""
    if settings.stats_path is not None:
        path, stats = settings.stats_path, stage.stats()
        await asyncio.get_running_loop().run_in_executor(None, write_stats, path, stats)
