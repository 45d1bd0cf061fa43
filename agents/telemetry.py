"""Telemetry stage: collector messages in; 1 s / 10 s / 5 min windows; aggregates out.

Per message: validate (bad ones to the dead letters), check the source belongs on
this topic and is within its rate budget, add its samples to their windows, and
send samples that came after their window closed to ``metrics.late``.

Every ``KESTREL_FLUSH_INTERVAL_S`` (and on rebalance): emit the windows that stream
time has closed to ``metrics.aggregates``, flush the producer so that every emission,
dead letter and late record is durable, persist the changed window state with its
marker (see :mod:`tables.metric_windows`), and only then ack the messages. Faust
commits acked offsets only, after flushing the changelog, so a worker killed at any
point resumes without losing or double-counting a sample.
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
from kestrel.ratelimit import SourceRateLimiter
from kestrel.schemas import LateSamples, parse_envelope, topic_suffix_for
from kestrel.topics import (
    COLLECTOR_TOPICS,
    METRICS_AGGREGATES,
    METRICS_LATE,
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
        self.samples = 0
        self.messages = 0
        self.replayed = 0

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
                await send_to_dead_letter(event, exc, stage=STAGE)
            else:
                await self._apply(batch, windows, message.topic, message.offset)
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

    async def _apply(
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
            await late_topic.send(key=late.source.encode(), value=record.model_dump_json().encode())
        self.messages += 1
        self.samples += batch.values

    async def flush(self) -> None:
        """Emit closed windows, make side effects durable, persist state, then ack."""
        async with self.lock:
            self.last_flush = time.monotonic()
            if not self.held:
                return
            forgotten = {}
            for (suffix, _), windows in self.windows.partitions.items():
                forgotten[suffix, windows.partition] = windows.forget_closed()
                for closed in windows.close_due():
                    aggregate = to_aggregate(closed.key, closed.state, closed.size_ms)
                    await aggregates_topic.send(
                        key=closed.key.aggregate_key().encode(),
                        value=aggregate.model_dump_json().encode(),
                    )
            # Emissions, dead letters and late records first: the marker written below
            # must never get ahead of them.
            await app.producer.flush()
            for (suffix, partition), windows in self.windows.partitions.items():
                self.windows.persist(suffix, windows, forgotten.get((suffix, partition), []))
            if self.replayed:
                log.info("skipped %d replayed messages already in the windows", self.replayed)
                self.replayed = 0
            held, self.held = self.held, []
            for event in held:
                event.ack()

    def due(self) -> bool:
        return time.monotonic() - self.last_flush >= settings.flush_interval_s

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
