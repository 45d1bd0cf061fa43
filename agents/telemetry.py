"""Telemetry stage: collector messages in; 1 s / 10 s / 5 min windows; aggregates out.

Per message: validate (bad ones to the dead letters), check the source belongs on
this topic and is within its rate budget, add its samples to their windows, and
send samples that came after their window closed to ``metrics.late``.

Every ``KESTREL_FLUSH_INTERVAL_S`` (and on rebalance) the stage takes a snapshot of
what it has applied and flushes it in two phases, because Kafka orders nothing across
partitions:

1. emit the windows stream time has closed to ``metrics.aggregates`` and wait until
   they, and every dead letter and late record sent so far, are durable;
2. write the changed window state and each partition's marker (the snapshot's offset
   and stream time) to the changelog (see :mod:`tables.metric_windows`) and wait until
   that is durable too;

and only then ack the snapshot's messages. Processing goes on during both waits: the
flush runs in its own task. Faust commits acked offsets only, so a worker killed
at any point resumes without losing or double-counting a sample. Everything goes out
through one confluent-kafka (C) producer. Under a backlog a flush waits at least nine
times its own last duration, so persisting state costs at most a tenth of the time.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any, cast

import faust
from faust.types import TP
from mode import BaseSignalT

from agents.deadletter import send_to_dead_letter
from faust_app import app, settings
from kestrel.errors import InvalidMessage
from kestrel.producer import KestrelProducer, ProducerFlushError
from kestrel.ratelimit import SourceRateLimiter
from kestrel.schemas import LateSamples, parse_envelope, topic_suffix_for
from kestrel.stats import LatencyReservoir, write_stats
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
PERSIST_CHUNK = 256  # window records written per hold of the stage's lock
FLUSH_TICK_S = 0.05  # how often the flush loop asks whether a flush is due

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
        self.flushing = False
        self._flusher: asyncio.Task[None] | None = None
        self.samples = 0
        self.messages = 0
        self.replayed = 0
        self.dead_letters = 0
        self.latency_ms = LatencyReservoir()
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
            # The stage allocates a few small objects per sample and keeps many
            # long-lived ones (window states): collect young objects less often, and
            # leave everything alive at start out of collections (measured: default
            # thresholds cost about a fifth of the throughput).
            gc.freeze()
            gc.set_threshold(20_000, 20, 20)
            outputs = [METRICS_AGGREGATES, METRICS_LATE, DEADLETTER]
            await asyncio.get_running_loop().run_in_executor(None, ensure_topics, settings, outputs)
            self._producer = KestrelProducer(settings, **{"linger.ms": 2})
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever(), name="telemetry-flush")

    async def _flush_forever(self) -> None:
        """The only place flushes start: a task of its own, so processing never waits.

        A plain asyncio task, not a Faust timer: Faust timers stop as soon as the
        worker starts stopping, while Faust then waits for every consumed message to
        be acked (``stream_wait_empty``), on shutdown and on rebalance alike. Only a
        flush acks them, so flushing must go on until the very end.
        """
        while True:
            await asyncio.sleep(FLUSH_TICK_S)
            try:
                if self.due():
                    await self.flush()
            except Exception as exc:  # anything else is a bug: fail loudly, not silently
                log.exception("telemetry flush failed")
                await app.crash(exc)
                return

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
                self.dead_letters += 1
            else:
                self._apply(batch, windows, message.topic, message.offset)
                # From the message's production (CreateTime) to its samples being in
                # the running windows.
                self.latency_ms.add(time.time() * 1000 - message.timestamp * 1000)
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
        self.messages += 1
        self.samples += batch.values

    async def flush(self) -> None:
        """Emit closed windows, persist state, then ack; see the module docstring.

        Processing goes on while deliveries are awaited: this flush covers, and acks,
        only what was applied when it started (its snapshot). Windows written in
        phase 2 may hold later messages too; their per-window offsets make a replay
        of those messages count nothing twice, and the marker claims only the
        snapshot, whose dead letters and late records phase 1 has made durable.
        """
        if self.flushing or self._producer is None:
            return
        self.flushing = True
        try:
            await self._flush()
        except ProducerFlushError as exc:
            # The snapshot's messages can be neither acked (their effects are not
            # durable) nor left unacked (Faust would never commit past them, and a
            # rebalance would wait for them forever). Crash: a restarted worker
            # replays from the last commit, which this design makes exact.
            log.critical("could not make window state durable; crashing the worker: %s", exc)
            await app.crash(exc)
        finally:
            self.flushing = False

    async def _flush(self) -> None:
        started = time.monotonic()
        locked = 0.0  # time this flush kept the stage from processing
        producer = self.producer
        async with self.lock:
            t0 = time.monotonic()
            if not self.held:
                self.last_flush = started
                return
            held, self.held = self.held, []
            snapshot = {
                key: (windows.applied_offset, windows.stream_time_ms)
                for key, windows in self.windows.partitions.items()
            }
            forgotten = {}
            for key, windows in self.windows.partitions.items():
                forgotten[key] = windows.forget_closed()
                for closed in windows.close_due():
                    aggregate = to_aggregate(closed.key, closed.state, closed.size_ms)
                    producer.send(
                        aggregates_topic.get_topic_name(),
                        aggregate.model_dump_json().encode(),
                        closed.key.aggregate_key().encode(),
                    )
            locked += time.monotonic() - t0
        await producer.flush_async()  # phase 1: outputs before the state that says so
        for key, (offset, stream_time) in snapshot.items():
            async with self.lock:
                owned = self.windows.partitions.get(key)
                if owned is None:
                    continue
                dirty = list(owned.dirty)
                owned.dirty.clear()
            # In chunks, letting messages through in between: a window changed after
            # its chunk is dirty again and is written by the next flush.
            for i in range(0, len(dirty), PERSIST_CHUNK):
                async with self.lock:
                    t0 = time.monotonic()
                    self.windows.persist_windows(producer, owned, dirty[i : i + PERSIST_CHUNK])
                    locked += time.monotonic() - t0
            async with self.lock:
                self.windows.persist_marker(
                    producer, key[0], owned, forgotten[key], offset, stream_time
                )
        await producer.flush_async()  # phase 2: state and markers
        if self.replayed:
            log.info("skipped %d replayed messages already in the windows", self.replayed)
            self.replayed = 0
        for event in held:
            event.ack()
        self.last_flush = time.monotonic()
        self.flush_cost_s = locked

    def due(self) -> bool:
        """Time to flush: the interval has passed, and nine times the last flush's cost.

        The cost is the time the flush held the stage; waits for deliveries do not
        count, as messages are processed meanwhile.
        """
        wait = max(settings.flush_interval_s, 9 * self.flush_cost_s)
        return time.monotonic() - self.last_flush >= wait

    def stats(self) -> dict[str, Any]:
        """Counters and latencies, for KESTREL_STATS_PATH and the dashboard."""
        p50, p99 = self.latency_ms.percentiles(0.5, 0.99)
        late: dict[str, int] = {}
        for windows in self.windows.partitions.values():
            for (source, window), n in windows.late_counts.items():
                late[f"{source}|{window}"] = late.get(f"{source}|{window}", 0) + n
        return {
            "messages": self.messages,
            "samples": self.samples,
            "dead_letters": self.dead_letters,
            "rate_limited_samples": dict(self.limiter.refused),
            "late_samples": late,
            "latency_ms_p50": p50,
            "latency_ms_p99": p99,
            "latency_count": self.latency_ms.count,
            "flush_cost_ms": self.flush_cost_s * 1000,
        }

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


@app.timer(1.0)  # type: ignore[untyped-decorator]  # Faust's timer is untyped
async def report_stats() -> None:
    """Write the stage's own numbers where KESTREL_STATS_PATH says, once a second."""
    if settings.stats_path is not None:
        path, stats = settings.stats_path, stage.stats()
        await asyncio.get_running_loop().run_in_executor(None, write_stats, path, stats)


@app.on_partitions_revoked.connect
async def forget_revoked(
    sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any
) -> None:
    """Receiver of Faust's revoke signal: ``args[0]`` is the set of revoked partitions."""
    revoked: set[TP] = args[0]
    await stage.on_revoked(revoked)
