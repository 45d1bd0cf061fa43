"""Telemetry stage: collector messages in; 1 s / 10 s / 5 min windows; aggregates out.

Per message, before anything touches state: validate the envelope (finite values,
sizes, at least one field), check that its source belongs on this topic, that its
timestamps are not ahead of the worker's clock by more than ``KESTREL_MAX_FUTURE_S``,
and that its source is within its rate budget. A message that fails goes to the dead
letters with the reason, as does one whose processing raised anything at all; the
stream goes on. Then its samples go into their windows, and samples that came after
their window closed go to ``metrics.late``.

State, outputs and progress follow the state protocol (:mod:`kestrel.state`): task
``p`` owns partition ``p`` of every collector topic (:mod:`tables.metric_windows`).
Every ``KESTREL_FLUSH_INTERVAL_S`` a commit emits the windows stream time has closed
to ``metrics.aggregates``, writes the sources that changed, and commits them with the
late records, the dead letters and the input markers in one transaction; only then
are the messages acked. A worker killed at any point resumes exactly.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any, cast

from mode import Service

from faust_app import app, settings
from kestrel.errors import InvalidMessage
from kestrel.reader import BatchReader, Record
from kestrel.schemas import LateSamples, check_event_time, parse_envelope, topic_suffix_for
from kestrel.state import Event, Message, Restored, StateStore, Task, processing_error
from kestrel.stats import LatencyReservoir, write_stats
from kestrel.topics import (
    COLLECTOR_TOPICS,
    DEADLETTER,
    METRICS_AGGREGATES,
    METRICS_LATE,
    STATE_WINDOWS,
    ensure_topics,
    faust_topic,
)
from tables.metric_windows import TelemetryPartition, TopicWindows, aggregate_json
from tables.windows import LateSamples as LateRows
from tables.windows import SampleBatch, default_specs

log = logging.getLogger(__name__)
STAGE = "window_metrics"

aggregates_topic = faust_topic(app, settings, METRICS_AGGREGATES)
late_topic = faust_topic(app, settings, METRICS_LATE)
#: The stage's own consumer group (kestrel.reader): not the Faust app's.
WINDOWS_GROUP = settings.app_id("windows")
TOPIC_SUFFIX = {spec.name(settings): spec.suffix for spec in COLLECTOR_TOPICS}
SPECS = default_specs(round(settings.window_grace_s * 1000))


class TelemetryStage:
    """Validation, windows and emission of the collector topics; counters."""

    def __init__(self) -> None:
        self.store: StateStore[TelemetryPartition] = StateStore(
            settings,
            app_id=app.conf.id,
            name="windows",
            changelog=STATE_WINDOWS,
            inputs=COLLECTOR_TOPICS,
            load=self._load,
            persist=self._persist,
            interval_s=settings.flush_interval_s,
            deadletter=DEADLETTER.name(settings),
            group=WINDOWS_GROUP,
        )
        self.reader = BatchReader(
            settings,
            group=WINDOWS_GROUP,
            topics=COLLECTOR_TOPICS,
            store=self.store,
            handle=self.handle,
        )
        self.store.catch_up = self.reader.catch_up
        self.samples = 0
        self.messages = 0
        self.emitted = 0
        self.latency_ms = LatencyReservoir()
        self.commit_cost_s = 0.0
        self._started = False

    async def start(self) -> None:
        """Before the first message: the topics it reads and writes, then the state store."""
        if not self._started:
            # The stage allocates a few small objects per sample and keeps many
            # long-lived ones (window states): collect young objects less often, and
            # leave everything alive at start out of collections (measured: default
            # thresholds cost about a fifth of the throughput).
            gc.freeze()
            gc.set_threshold(20_000, 20, 20)
            # Its inputs too: no Faust agent subscribes to them for it, and a producer
            # that wrote first would have the broker auto-create them with one partition.
            topics = [*COLLECTOR_TOPICS, METRICS_AGGREGATES, METRICS_LATE, DEADLETTER]
            await asyncio.get_running_loop().run_in_executor(None, ensure_topics, settings, topics)
            self._started = True
        await self.store.start(app.crash)

    def _load(self, restored: Restored) -> TelemetryPartition:
        part = TelemetryPartition.restore(restored, SPECS, settings.source_max_hz)
        log.info("windows[%d]: %d sources with open windows", restored.partition, part.sources())
        return part

    async def handle(self, records: list[Record]) -> None:
        """Apply a batch of messages; each is acked once the commit that covers it is durable."""
        await self.store.process_many(records, self._apply)

    def _apply(
        self, task: Task[TelemetryPartition], events: list[Event]
    ) -> list[InvalidMessage | None]:
        """Admit each message in turn, then fold the admitted ones into their windows."""
        errors: list[InvalidMessage | None] = [None] * len(events)
        staged: list[tuple[int, TopicWindows]] = []
        now_ms = time.time() * 1000
        for i, event in enumerate(events):
            try:
                staged.append((i, self._admit(task, event.message, now_ms)))
            except InvalidMessage as exc:
                errors[i] = exc
            except Exception as exc:
                log.exception("%s: admitting a message failed; it goes to the dead letters", STAGE)
                errors[i] = processing_error(exc)
        topics = {id(topic): topic for _, topic in staged}
        applied = {key: iter(topic.windows.apply_staged()) for key, topic in topics.items()}
        for i, topic in staged:
            lates = next(applied[id(topic)])
            if isinstance(lates, Exception):
                errors[i] = processing_error(lates)
                continue
            message = cast(Record, events[i].message)
            for late in lates:
                self._send_late(task, late, message)
        return errors

    def _admit(
        self, task: Task[TelemetryPartition], message: Message, now_ms: float
    ) -> TopicWindows:
        """Validate one message and stage it in its topic's windows (or raise why not)."""
        suffix = TOPIC_SUFFIX[message.topic]
        envelope = parse_envelope(message.value or b"")
        if topic_suffix_for(envelope.source) != suffix:
            raise InvalidMessage(
                "wrong_topic",
                f"source {envelope.source!r} publishes to {topic_suffix_for(envelope.source)}",
            )
        check_event_time(envelope, int(now_ms), round(settings.max_future_s * 1000))
        batch = SampleBatch.from_envelope(envelope)
        topic = task.model.topic(suffix)
        problem = topic.windows.over_capacity(batch, settings.max_sources, settings.max_fields)
        if problem is not None:
            reason, _, detail = problem.partition(": ")
            raise InvalidMessage(reason, detail)
        if not topic.admit(batch.source, batch.timestamps.tolist()):
            raise InvalidMessage(
                "rate_limited",
                f"{batch.source} is over {settings.source_max_hz:g} samples/s",
            )
        topic.windows.stage(batch)
        self.messages += 1
        self.samples += batch.values
        # From the message's production (CreateTime) to its samples being in the windows.
        self.latency_ms.add(now_ms - cast(Record, message).timestamp_ms)
        return topic

    def _send_late(self, task: Task[TelemetryPartition], late: LateRows, message: Record) -> None:
        record = LateSamples(
            source=late.source,
            window=late.window,  # type: ignore[arg-type]
            window_start_ms=late.window_start_ms,
            stream_time_ms=late.stream_time_ms,
            timestamp=late.timestamps,
            data=late.fields,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
        )
        task.send(
            late_topic.get_topic_name(), record.model_dump_json().encode(), late.source.encode()
        )

    def _persist(self, task: Task[TelemetryPartition]) -> None:
        """At each commit: emit the closed windows, then write the changed sources."""
        started = time.monotonic()
        topic = aggregates_topic.get_topic_name()
        for closed in task.model.close_due():
            aggregate = aggregate_json(closed.key, closed.state, closed.size_ms)
            task.send(topic, aggregate, closed.key.aggregate_key().encode())
            self.emitted += 1
        for key, value in task.model.changes():
            task.put(key, value)
        self.commit_cost_s = time.monotonic() - started

    def stats(self) -> dict[str, Any]:
        """Counters and latencies, for KESTREL_STATS_PATH and the dashboard."""
        p50, p99 = self.latency_ms.percentiles(0.5, 0.99)
        late: dict[str, int] = {}
        refused: dict[str, int] = {}
        for task in self.store.tasks.values():
            for topic in task.model.topics.values():
                for (source, window), n in topic.windows.late_counts.items():
                    late[f"{source}|{window}"] = late.get(f"{source}|{window}", 0) + n
                for source, n in topic.limiter.refused.items():
                    refused[source] = refused.get(source, 0) + n
        return {
            "messages": self.messages,
            "batches": self.reader.batches,
            "samples": self.samples,
            "emitted": self.emitted,
            "dead_letters": dict(self.store.dead_letters),
            "rate_limited_samples": refused,
            "late_samples": late,
            "latency_ms_p50": p50,
            "latency_ms_p99": p99,
            "latency_count": self.latency_ms.count,
            "persist_cost_ms": self.commit_cost_s * 1000,
            "state": dict(self.store.stats),
        }


stage = TelemetryStage()


@app.service
class WindowMetrics(Service):
    """Validate and window every collector message, in batches; acks follow each commit.

    Not a Faust agent: the stage reads its topics itself (:mod:`kestrel.reader` says
    why), in the worker's process and event loop, and leaves with the worker. A service
    of the app, not a task: Faust awaits its start (topics created, state store
    started) before the worker says Ready, so a producer that waits for Ready never
    writes to a topic the stage has not created.
    """

    async def on_start(self) -> None:
        await stage.start()
        self.add_future(self._read())

    async def _read(self) -> None:
        try:
            await stage.reader.run()
        except Exception as exc:
            log.exception("%s: the reader failed; stopping the worker", STAGE)
            await app.crash(exc)


async def _stop_reading(sender: Any, /, *args: Any, **kwargs: Any) -> None:
    await stage.reader.stop()


app.on_before_shutdown.connect(_stop_reading)


@app.timer(1.0)  # type: ignore[untyped-decorator]  # Faust's timer is untyped
async def report_stats() -> None:
    """Write the stage's own numbers where KESTREL_STATS_PATH says, once a second."""
    if settings.stats_path is not None:
        path, stats = settings.stats_path, stage.stats()
        await asyncio.get_running_loop().run_in_executor(None, write_stats, path, stats)
