"""Fills a :class:`web.hot_cache.HotCache` from Kafka, in the web server's event loop.

One aiokafka consumer, assigned every partition of the topics it reads (no consumer
group: every web process needs all of it), so it never rebalances. At start it seeks
each topic by timestamp to what the cache must hold: the aggregates and the raw
samples of the last 5 minutes (so the running 5 min window is whole) and the alerts
of the last hour; from then on it follows the topics live. A malformed record is
logged and skipped: the stream worker has already dead-lettered it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from kestrel.camera.frame_cache import CachedFrame, FrameCache
from kestrel.camera.frames import parse_headers
from kestrel.errors import InvalidMessage
from kestrel.schemas import Alert, MetricEnvelope, WindowAggregate, parse_envelope
from kestrel.schemas.camera import CameraResult, FrameDropped
from kestrel.schemas.temporal import TemporalAnalysis
from kestrel.settings import Settings
from kestrel.topics import (
    ALERTS,
    ANALYTICS_TEMPORAL,
    CAMERA_FRAMES,
    CAMERA_RESULTS,
    COLLECTOR_TOPICS,
    METRICS_AGGREGATES,
    METRICS_ENERGY,
    TopicSpec,
    ensure_topics,
    partitions_of,
)
from web.hot_cache import HORIZON_MS, HotCache

log = logging.getLogger(__name__)

ALERTS_LOOKBACK_MS = 3_600_000
Record = Any  # aiokafka's ConsumerRecord: untyped here (aiokafka ships no stubs)


class HotCacheFeed:
    """Consumes Kestrel's topics into a hot cache; ``start`` returns once caught up."""

    def __init__(
        self, settings: Settings, cache: HotCache, frames: FrameCache | None = None
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.frames = frames
        self.records = 0
        self.skipped = 0
        self.caught_up = asyncio.Event()
        #: Notified after each batch of records is in the cache.
        self.updated = asyncio.Condition()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._handlers: dict[str, Callable[[Record], None]] = {}
        # Frames only from now on: the cache holds the latest; results of the last minute.
        lookback = {ALERTS.suffix: ALERTS_LOOKBACK_MS, CAMERA_FRAMES.suffix: 0}
        lookback[CAMERA_RESULTS.suffix] = 60_000
        specs = [*COLLECTOR_TOPICS, METRICS_AGGREGATES, METRICS_ENERGY, ALERTS, CAMERA_RESULTS]
        specs.append(ANALYTICS_TEMPORAL)
        if frames is not None:
            specs.append(CAMERA_FRAMES)
        self._plan: list[tuple[TopicSpec, int]] = [
            (spec, lookback.get(spec.suffix, HORIZON_MS)) for spec in specs
        ]
        for spec, _ in self._plan:
            self._handlers[spec.name(settings)] = self._handler(spec)

    def follow(self, spec: TopicSpec, lookback_ms: int, handle: Callable[[bytes], None]) -> None:
        """Also read ``spec`` from ``lookback_ms`` ago, each record's value to ``handle``
        (before :meth:`start`)."""
        self._plan.append((spec, lookback_ms))
        self._handlers[spec.name(self.settings)] = lambda r: handle(_value(r))

    def _handler(self, spec: TopicSpec) -> Callable[[Record], None]:
        cache = self.cache
        if spec is METRICS_AGGREGATES:
            return lambda r: cache.add_aggregate(WindowAggregate.model_validate_json(_value(r)))
        if spec is METRICS_ENERGY:
            return lambda r: cache.add_energy(MetricEnvelope.model_validate_json(_value(r)))
        if spec is ALERTS:
            return lambda r: cache.add_alert(Alert.model_validate_json(_value(r)))
        if spec is ANALYTICS_TEMPORAL:
            return lambda r: cache.add_temporal(TemporalAnalysis.model_validate_json(_value(r)))
        if spec is CAMERA_RESULTS:
            return self._add_result
        if spec is CAMERA_FRAMES:
            return self._add_frame
        return lambda r: cache.add_samples(parse_envelope(_value(r)))

    def _add_result(self, record: Record) -> None:
        """A frame's record: its result, or why it has none (counted per camera)."""
        data = orjson.loads(_value(record))
        if isinstance(data, dict) and data.get("kind") == "frame_dropped":
            self.cache.add_drop(FrameDropped.model_validate(data))
        else:
            self.cache.add_result(CameraResult.model_validate(data))

    def _add_frame(self, record: Record) -> None:
        assert self.frames is not None
        headers = parse_headers(list(record.headers or ()))
        camera_id = (record.key or b"").decode(errors="replace")
        frame = CachedFrame(headers.frame_id, camera_id, headers.capture_ns, _value(record))
        self.frames.put(frame)

    def _topics(self, specs: list[TopicSpec]) -> dict[str, list[int]]:
        """Create the topics if need be; the partitions each really has (not the catalogue's)."""
        ensure_topics(self.settings, specs)
        return partitions_of(self.settings, [spec.name(self.settings) for spec in specs])

    async def start(self, timeout_s: float = 30.0) -> None:
        """Assign, seek by time, and follow; return once the backlog is read."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            # The stages write in transactions: a dashboard shows only what committed.
            isolation_level="read_committed",
        )
        # The topics may not exist yet (no worker has started): create them as the
        # catalogue says, as `kestrel-topics create` would, so assigning cannot fail.
        specs = [spec for spec, _ in self._plan]
        listed = await asyncio.get_running_loop().run_in_executor(None, self._topics, specs)
        await consumer.start()
        self._consumer = consumer
        now_ms = int(time.time() * 1000)
        partitions: dict[TopicPartition, int] = {}
        for spec, lookback_ms in self._plan:
            topic = spec.name(self.settings)
            for p in listed.get(topic, []):
                partitions[TopicPartition(topic, p)] = now_ms - lookback_ms
        consumer.assign(list(partitions))
        starts = await consumer.offsets_for_times(partitions)
        ends = await consumer.end_offsets(list(partitions))
        for tp, found in starts.items():
            consumer.seek(tp, found.offset if found is not None else ends[tp])
        pending = {tp: end for tp, end in ends.items() if end > await consumer.position(tp)}
        self._task = asyncio.create_task(self._follow(pending), name="hot-cache-feed")
        self._task.add_done_callback(_log_failure)
        await asyncio.wait_for(self.caught_up.wait(), timeout_s)
        log.info("hot cache: %d records read, %d sources", self.records, len(self.cache.sources()))

    async def _follow(self, pending: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        assert consumer is not None
        if not pending:
            self.caught_up.set()
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=2_000)
            for tp, records in batches.items():
                handle = self._handlers[tp.topic]
                for record in records:
                    self._apply(handle, record, tp)
            if pending:
                # By position, not by the last record's offset: a transaction's commit
                # marker takes an offset that no record is delivered at.
                for tp in list(pending):
                    if await consumer.position(tp) >= pending[tp]:
                        del pending[tp]
                if not pending:
                    self.caught_up.set()
            if batches:
                async with self.updated:
                    self.updated.notify_all()

    def _apply(self, handle: Callable[[Record], None], record: Record, tp: TopicPartition) -> None:
        try:
            handle(record)
        except (InvalidMessage, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            self.skipped += 1
            log.warning("hot cache skips %s[%d]@%d: %s", tp.topic, tp.partition, record.offset, exc)
        else:
            self.records += 1

    @property
    def failure(self) -> str | None:
        """Why the feed stopped following Kafka, or None while it follows."""
        task = self._task
        if task is None:
            return "not started"
        if not task.done():
            return None
        if task.cancelled():
            return "stopped"
        error = task.exception()
        return f"{type(error).__name__}: {error}" if error is not None else "ended"

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


def _value(record: Record) -> bytes:
    if record.value is None:
        raise InvalidMessage("missing_field", "empty record")
    value: bytes = record.value
    return value


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("hot cache feed stopped", exc_info=task.exception())
