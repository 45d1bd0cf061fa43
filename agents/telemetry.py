"""Telemetry stage: collector messages in; 1 s / 10 s / 5 min windows; aggregates out.

Per message: validate (bad ones to the dead letters), check the source belongs on
this topic and is within its rate budget, add its samples to their windows, and
send samples that came after their window closed to ``metrics.late``.

Every ``KESTREL_FLUSH_INTERVAL_S`` (and on rebalance) the stage flushes, in two
phases, because Kafka orders nothing across partitions:

1. emit the windows stream time has closed to ``metrics.aggregates`` and wait until
   they, and every dead letter and late record sent since the last flush, are durable;
2. write the changed window state and each partition's marker to the changelog (see
   :mod:`tables.metric_windows`) and wait until that is durable too;

and only then ack the messages. Faust commits acked offsets only, so a worker killed
at any point resumes without losing or double-counting a sample. Everything goes out
through one confluent-kafka (C) producer. Under a backlog a flush waits at least four
times its own last duration, so persisting state costs at most a fifth of the time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import faust
from faust.types import TP
from mode import BaseSignalT

from agents.deadletter import send_to_dead_letter
from faust_app import app, settings
from kestrel.errors import InvalidMessage
from kestrel.producer import KestrelProducer
from kestrel.ratelimit import SourceRateLimiter
from kestrel.schemas import LateSamples, parse_envelope, topic_suffix_for
from kestrel.topics import (
    COLLECTOR_TOPICS,
    DEADLETTER,
    METRICS_AGGREGATES,
    METRICS_LATE,
    ensure_topics,
    faust_topic,
)
from tables.metric_windows import WindowStore, store, to_aggregate
from tables.windows import PartitionWindows, SampleBatch

log = logging.getLogger(__name__)
STAGE = "window_metrics"

collector_topics = faust_topic(app, settings, *COLLECTOR_TOPICS)
aggregates_topic = faust_topic(app, settings, METRICS_AGGREGATES)
late_topic = faust_topic(app, settings, METRICS_LATE)
TOPIC_SUFFIX = {spec.name(settings): spec.suffix for spec in COLLECTOR_TOPICS}


class TelemetryStage:
    """Owns the windows, the acks held until state is durable, and the counters."""

    def __init__(self, windows: WindowStore, limiter: SourceRateLimiter) -> None:
        self.windows = windows
        self.limiter = limiter
        self.held: list[faust.EventT[bytes]] = []
        self.lock = asyncio.Lock()
        self.last_flush = time.monotonic()
        self.flush_cost_s = 0.0
        self.side_effects = 0  # dead letters and late records since the last flush
        self.samples = 0
        self.messages = 0
        self.replayed = 0
        self._producer: KestrelProducer | None = None

    @property
    def producer(self) -> KestrelProducer:
        """The stage's producer; :meth:`start` creates it."""
        assert self._producer is not None, "TelemetryStage.start() was not awaited"
        return self._producer

    async def start(self) -> None:
        """Before the first send: create the output topics, then the producer.

        A producer's first send to a missing topic would make the broker create it
        with its defaults: one partition, and no compaction for the aggregates.
        """
        if self._producer is None:
            outputs = [METRICS_AGGREGATES, METRICS_LATE, DEADLETTER]
            await asyncio.get_running_loop().run_in_executor(None, ensure_topics, settings, outputs)
            self._producer = KestrelProducer(settings, **{"linger.ms": 2})

    async def handle(self, event: faust.EventT[bytes]) -> None:
        """Apply one message; its ack waits for the next flush."""
        message = event.message
        suffix = TOPIC_SUFFIX[message.topic]
        async with self.lock:
            windows = self.windows.get(suffix, message.partition)
            self.held.append(event)
            if windows.already_applied(message.offset):
                self.replayed += 1
                return
            try:
                batch = self._admit(event, suffix)
            except InvalidMessage as exc:
                send_to_dead_letter(self.producer, event, exc, stage=STAGE)
                self.side_effects += 1
            else:
                self._apply(batch, windows, message.topic, message.offset)
            windows.applied_offset = max(windows.applied_offset, message.offset)

    def _admit(self, event: faust.EventT[bytes], suffix: str) -> SampleBatch:
        envelope = parse_envelope(event.value)
        if topic_suffix_for(envelope.source) != suffix:
            raise InvalidMessage(
                "wrong_topic",
                f"source {envelope.source!r} publishes to {topic_suffix_for(envelope.source)}",
            )
        batch = SampleBatch.from_envelope(envelope)
        if not self.limiter.admit(batch.source, batch.timestamps.tolist()):
            raise InvalidMessage(
                "rate_limited",
                f"{batch.source} is over {settings.source_max_hz:g} samples/s",
            )
        return batch

    def _apply(
        self, batch: SampleBatch, windows: PartitionWindows, topic: str, offset: int
    ) -> None:
        for late in windows.apply(batch, offset):
            record = LateSamples(
                source=late.source,
                window=late.window,  # type: ignore[arg-type]
                window_start_ms=late.window_start_ms,
                stream_time_ms=late.stream_time_ms,
                timestamp=late.timestamps,
                data=late.fields,
                topic=topic,
                partition=windows.partition,
                offset=offset,
            )
            self.producer.send(
                late_topic.get_topic_name(), record.model_dump_json().encode(), late.source.encode()
            )
            self.side_effects += 1
        self.messages += 1
        self.samples += batch.values

    async def flush(self) -> None:
        """Emit closed windows, persist state, then ack; see the module docstring."""
        async with self.lock:
            started = time.monotonic()
            if not self.held or self._producer is None:
                self.last_flush = started
                return
            producer = self.producer
            aggregates = aggregates_topic.get_topic_name()
            forgotten = {}
            for key, windows in self.windows.partitions.items():
                forgotten[key] = windows.forget_closed()
                for closed in windows.close_due():
                    aggregate = to_aggregate(closed.key, closed.state, closed.size_ms)
                    producer.send(
                        aggregates,
                        aggregate.model_dump_json().encode(),
                        closed.key.aggregate_key().encode(),
                    )
                    self.side_effects += 1
            if self.side_effects:
                await producer.flush_async()  # phase 1: outputs before the state saying so
                self.side_effects = 0
            for (suffix, partition), windows in self.windows.partitions.items():
                self.windows.persist(producer, suffix, windows, forgotten[suffix, partition])
            await producer.flush_async()  # phase 2: state and markers
            if self.replayed:
                log.info("skipped %d replayed messages already in the windows", self.replayed)
                self.replayed = 0
            held, self.held = self.held, []
            for event in held:
                event.ack()
            self.last_flush = time.monotonic()
            self.flush_cost_s = self.last_flush - started

    def due(self) -> bool:
        """Time to flush: the interval has passed, and four times the last flush's cost."""
        wait = max(settings.flush_interval_s, 4 * self.flush_cost_s)
        return time.monotonic() - self.last_flush >= wait

    async def on_revoked(self, revoked: set[TP]) -> None:
        """Forget revoked partitions; Faust waited for their acks, so they are persisted."""
        async with self.lock:
            for tp in revoked:
                if tp.topic in TOPIC_SUFFIX:
                    self.windows.drop(TOPIC_SUFFIX[tp.topic], tp.partition)


stage = TelemetryStage(store, SourceRateLimiter(settings.source_max_hz))


@app.agent(collector_topics)
async def window_metrics(stream: faust.StreamT[bytes]) -> None:
    """Validate and window every collector message; acks are manual (see flush)."""
    # noack() is on the concrete Stream only; Faust's StreamT interface lacks it.
    manual_acks = cast(faust.Stream[bytes], stream).noack()
    await stage.start()
    async for event in manual_acks.events():
        await stage.handle(event)
        if stage.due():
            await stage.flush()


@app.timer(settings.flush_interval_s)  # type: ignore[untyped-decorator]  # Faust's timer is untyped
async def flush_windows() -> None:
    """Flush while the stream is quiet too: close windows, release acks."""
    if stage.due():
        await stage.flush()


@app.on_partitions_revoked.connect
async def forget_revoked(
    sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any
) -> None:
    """Receiver of Faust's revoke signal: ``args[0]`` is the set of revoked partitions."""
    revoked: set[TP] = args[0]
    await stage.on_revoked(revoked)
