"""Analytics stage: collector messages in; alerts and the energy mapping out.

Its own Faust app and consumer group (``faust -A faust_app:analytics worker``), so
rules never slow the windows down and each scales on its own. Per message: validate,
apply the same checks and 60 Hz budget as the stream stage (a message that stage
refuses is not analysed either), run every check of the rules file
(:class:`kestrel.analytics.engine.AnalyticsEngine`) and publish alert starts and
ends to ``alerts``, and each watched field's temporal analysis (regime and pattern
matches) to ``analytics.temporal``; for a model source, publish the latest sample
with its ``energy_visual`` to ``metrics.energy``.

Invalid messages are the stream stage's to dead-letter; this stage counts and skips
them. Everything the checks remember per source (pending deadlines, 5-minute
baselines, recent means, jank frames, active alerts, rate counts) is state of the
state protocol (:mod:`kestrel.state`): it commits with the alerts and energy records
it caused, every ``KESTREL_RESULT_COMMIT_MS``, so after a crash or a rebalance the
checks decide exactly as an uninterrupted worker would, and every alert record goes
out once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import faust
import orjson

from faust_app import analytics as app
from faust_app import settings
from kestrel.analytics.config import AnalyticsConfig, load_rules
from kestrel.analytics.energy import energy_visual
from kestrel.analytics.engine import AnalyticsEngine
from kestrel.errors import InvalidMessage
from kestrel.ratelimit import SourceRateLimiter
from kestrel.schemas import MetricEnvelope, check_event_time, parse_envelope, topic_suffix_for
from kestrel.state import Event, Restored, StateStore, Task
from kestrel.stats import write_stats
from kestrel.topics import (
    ALERTS,
    ANALYTICS_TEMPORAL,
    COLLECTOR_TOPICS,
    DEADLETTER,
    METRICS_ENERGY,
    STATE_ANALYTICS,
    ensure_topics,
    faust_topic,
)
from tables import bind

log = logging.getLogger(__name__)

collector_topics = faust_topic(app, settings, *COLLECTOR_TOPICS)
alerts_topic = faust_topic(app, settings, ALERTS)
energy_topic = faust_topic(app, settings, METRICS_ENERGY)
temporal_topic = faust_topic(app, settings, ANALYTICS_TEMPORAL)
TOPIC_SUFFIX = {spec.name(settings): spec.suffix for spec in COLLECTOR_TOPICS}


IDLE_MS = 600_000  # a source silent this long (event time) may give its place up


class AnalyticsPartition:
    """The analytics state of one partition: an engine and a rate limiter per source.

    Sources are named by producers, so a partition holds at most ``max_sources`` of
    them (``KESTREL_MAX_SOURCES``). A new source past the cap takes the place of the
    source silent longest, if that one has been silent ``IDLE_MS`` of the new
    message's event time and has no active alert (a deadline it left pending is then
    not judged); otherwise the new source is skipped (counted). The decision depends
    only on the state and the message, so a replay decides the same.
    """

    def __init__(self, rules: AnalyticsConfig, max_sources: int) -> None:
        self.engine = AnalyticsEngine(rules, {})
        self.limiter = SourceRateLimiter(settings.source_max_hz)
        self.max_sources = max_sources
        self.last_ms: dict[str, int] = {}  # each source's latest event time
        self.evicted: set[str] = set()  # sources to tombstone at the next commit

    def make_room(self, source: str, t_ms: int) -> bool:
        """May ``source`` have state here? Evicts an idle source if it must."""
        if source in self.last_ms or len(self.last_ms) < self.max_sources:
            return True
        idle = [
            (last, name)
            for name, last in self.last_ms.items()
            if last <= t_ms - IDLE_MS and not self.engine.tracker.has_active(name)
        ]
        if not idle:
            return False
        _, stalest = min(idle)
        self.engine.forget(stalest)
        self.limiter.forget(stalest)
        del self.last_ms[stalest]
        self.evicted.add(stalest)
        return True

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        records: list[tuple[bytes, bytes | None]] = []
        for source in sorted(self.engine.dirty):
            record = {
                "engine": self.engine.dump(source),
                "rate": self.limiter.counts(source),
                "last": self.last_ms.get(source),
            }
            records.append((source.encode(), orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS)))
            self.evicted.discard(source)  # evicted, then back: its record replaces it
        records += [(source.encode(), None) for source in sorted(self.evicted)]
        self.engine.dirty.clear()
        self.evicted.clear()
        return records


class AnalyticsStage:
    """The rules, the analytics tasks and the counters."""

    def __init__(self) -> None:
        self.rules = load_rules(settings.rules_path)
        self.store: StateStore[AnalyticsPartition] = StateStore(
            settings,
            app_id=app.conf.id,
            name="analytics",
            changelog=STATE_ANALYTICS,
            inputs=COLLECTOR_TOPICS,
            load=self._load,
            persist=self._persist,
            interval_s=settings.result_commit_ms / 1000,
            deadletter=DEADLETTER.name(settings),
        )
        self.messages = 0
        self.skipped: dict[str, int] = {}
        self.alerts: dict[str, int] = {"active": 0, "cleared": 0}
        self.analyses = 0
        self._started = False

    async def start(self) -> None:
        if not self._started:
            outputs = [ALERTS, METRICS_ENERGY, ANALYTICS_TEMPORAL, DEADLETTER]
            await asyncio.get_running_loop().run_in_executor(None, ensure_topics, settings, outputs)
            log.info(
                "analytics: %d temporal rules, %d jank, %d degradation, %d pattern watches "
                "(%s), %d regime watches",
                len(self.rules.rules),
                len(self.rules.jank),
                len(self.rules.degradation),
                len(self.rules.patterns.watch),
                ", ".join(self.rules.patterns.thresholds),
                len(self.rules.regimes.watch),
            )
            self._started = True
        await self.store.start(app.crash)

    def _load(self, restored: Restored) -> AnalyticsPartition:
        part = AnalyticsPartition(self.rules, settings.max_sources)
        for key, value in restored.records.items():
            source, record = key.decode(), orjson.loads(value)
            if record["engine"] is not None:
                part.engine.load(source, record["engine"])
            part.limiter.restore(source, record["rate"])
            if record.get("last") is not None:
                part.last_ms[source] = int(record["last"])
        return part

    def _persist(self, task: Task[AnalyticsPartition]) -> None:
        for key, value in task.model.changes():
            task.put(key, value)

    async def handle(self, event: faust.EventT[bytes]) -> None:
        await self.store.process(event, self._apply)

    def _apply(self, task: Task[AnalyticsPartition], event: Event) -> None:
        """Analyse one message; queue its alerts and energy record."""
        part = task.model
        envelope = self._admit(part, event)
        if envelope is None:
            return
        self.messages += 1
        if envelope.samples is None:
            timestamps = [envelope.timestamp]
            columns: dict[str, list[float | None]] = {k: [v] for k, v in envelope.data.items()}
        else:
            timestamps, columns = envelope.samples.timestamp, envelope.samples.data
        for alert in part.engine.observe(envelope.source, timestamps, columns):
            self.alerts[alert.state] += 1
            log.info("alert %s %s: %s = %s", alert.state, alert.alert_id, alert.field, alert.value)
            task.send(
                alerts_topic.get_topic_name(),
                alert.model_dump_json().encode(),
                alert.alert_id.encode(),
                timestamp_ms=alert.timestamp,
            )
        for analysis in part.engine.take_analyses():
            self.analyses += 1
            task.send(
                temporal_topic.get_topic_name(),
                analysis.model_dump_json().encode(),
                analysis.key.encode(),
                timestamp_ms=analysis.timestamp,
            )
        if envelope.source.startswith("model:"):
            energy = envelope.model_copy(
                update={"samples": None, "energy_visual": energy_visual(envelope.data)}
            )
            task.send(
                energy_topic.get_topic_name(),
                energy.model_dump_json(exclude_none=True).encode(),
                envelope.source.encode(),
                timestamp_ms=envelope.timestamp,
            )

    def _admit(self, part: AnalyticsPartition, event: Event) -> MetricEnvelope | None:
        """The message's envelope, or None (counted) if the stream stage refuses it."""
        try:
            envelope = parse_envelope(event.message.value or b"")
            if topic_suffix_for(envelope.source) != TOPIC_SUFFIX[event.message.topic]:
                raise InvalidMessage("wrong_topic", envelope.source)
            now_ms = int(time.time() * 1000)
            check_event_time(envelope, now_ms, round(settings.max_future_s * 1000))
        except InvalidMessage as exc:
            self._skip(exc.reason)
            return None
        timestamps = (
            [envelope.timestamp] if envelope.samples is None else envelope.samples.timestamp
        )
        newest = max(timestamps)
        if not part.make_room(envelope.source, newest):
            self._skip("too_many_sources")
            return None
        part.last_ms[envelope.source] = max(newest, part.last_ms.get(envelope.source, newest))
        if not part.limiter.admit(envelope.source, timestamps):
            part.engine.dirty.add(envelope.source)  # its rate counts are state too
            self._skip("rate_limited")
            return None
        part.engine.dirty.add(envelope.source)
        return envelope

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def stats(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "skipped": dict(self.skipped),
            "alerts": dict(self.alerts),
            "analyses": self.analyses,
            "active_alerts": sum(
                len(t.model.engine.tracker.active) for t in self.store.tasks.values()
            ),
            "dead_letters": dict(self.store.dead_letters),
            "state": dict(self.store.stats),
        }


stage = AnalyticsStage()
bind(app, stage.store)


@app.agent(collector_topics)
async def analyse(stream: faust.StreamT[bytes]) -> None:
    """Run the rules on every collector message; acks follow each commit."""
    manual_acks = cast(faust.Stream[bytes], stream).noack()
    await stage.start()
    async for event in manual_acks.events():
        await stage.handle(event)


@app.timer(1.0)  # type: ignore[untyped-decorator]  # Faust's timer is untyped
async def report_stats() -> None:
    """Write the stage's counters where KESTREL_STATS_PATH says, once a second."""
    if settings.stats_path is not None:
        path, stats = settings.stats_path, stage.stats()
        await asyncio.get_running_loop().run_in_executor(None, write_stats, path, stats)
