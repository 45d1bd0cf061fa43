"""A stage's input topics read in batches, by a consumer group of the stage's own.

Faust hands its agents one message at a time, and its path from Kafka to an agent
costs about 200 us a message on the development machine whatever the agent does: an
agent that does nothing drains about 4,500 small messages a second, a plain
confluent-kafka consumer 550,000 (``make bench-telemetry``'s ``faust, empty agent``
row). ``Stream.take()`` batches after that path, not before it. Upstream:
https://github.com/robinhood/faust/issues/563 ("Message consumption is slow", open;
"AIOKafkaConsumer works at least ten times faster"). The windows stage, whose input
is many small messages, therefore reads its topics itself, inside the same
``faust worker`` process:

* **Its own group**, ``<namespace>-windows``, with Kafka's range assignor, which gives
  partition ``p`` of every input topic (all have the same count) to the same member:
  the co-partitioning the state protocol's task ``p`` needs.
* **The state protocol unchanged** (:mod:`kestrel.state`): an assignment restores the
  partitions' tasks; a revocation first commits what their tasks hold (the consumer's
  thread waits for it); a message is acked once its transaction committed, and only
  acked offsets are committed to the group (every ``KESTREL_COMMIT_INTERVAL_S``, and
  at each revocation and at shutdown).
* **One thread** owns the consumer (librdkafka's calls and rebalance callbacks); the
  stage's work runs on the event loop, one batch at a time: a batch is whatever the
  client holds when asked, up to ``KESTREL_BATCH_MESSAGES``, or the first message to
  arrive within 100 ms and what came with it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage

from kestrel.settings import Settings
from kestrel.state import CLIENT_LOG, StateStore
from kestrel.topics import TopicSpec, partitions_of

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.1  # how long one ask waits for a first message when nothing is buffered


class Record:
    """One input message as the state protocol sees it, and its own ack."""

    __slots__ = (
        "_reader",
        "headers",
        "key",
        "offset",
        "partition",
        "timestamp_ms",
        "topic",
        "value",
    )
    generation_id: int | None = None  # a batch is processed before the next is read

    def __init__(self, message: KafkaMessage, reader: BatchReader) -> None:
        self.topic: str = message.topic() or ""
        self.partition: int = message.partition() or 0
        self.offset: int = message.offset() or 0
        self.key: bytes | None = message.key()
        self.value: bytes | None = message.value()
        self.headers: Any = message.headers()
        self.timestamp_ms: int = message.timestamp()[1]
        self._reader = reader

    @property
    def message(self) -> Record:
        return self

    def ack(self) -> None:
        self._reader.ack(self)


class BatchReader:
    """Reads ``topics`` in batches for ``store``'s stage; ``handle`` takes each batch."""

    def __init__(
        self,
        settings: Settings,
        *,
        group: str,
        topics: Sequence[TopicSpec],
        store: StateStore[Any],
        handle: Callable[[list[Record]], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.group = group
        self.specs = list(topics)
        self.store = store
        self.handle = handle
        self.batches = 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"{group}-reader")
        self._consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._acked: dict[tuple[str, int], int] = {}  # highest acked offset, to commit
        self._acked_lock = threading.Lock()
        self._committed_at = time.monotonic()
        self._generation = 0
        self._stopping = False
        self._stopped = asyncio.Event()

    # --- On the event loop -----------------------------------------------------------
    async def run(self) -> None:
        """Read and hand over batches until :meth:`stop`."""
        self._loop = asyncio.get_running_loop()
        try:
            await self._loop.run_in_executor(self._thread, self._open)
            while not self._stopping:
                messages = await self._loop.run_in_executor(self._thread, self._poll)
                records = []
                for message in messages:
                    error = message.error()
                    if error is None:
                        records.append(Record(message, self))
                    else:
                        log.warning("%s: reading %s: %s", self.group, message.topic(), error.str())
                if records and not self._stopping:
                    self.batches += 1
                    await self.handle(records)
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Stop reading; commit what the tasks hold and the acked offsets; leave the group."""
        self._stopping = True
        if self._loop is None:
            return
        await self._stopped.wait()
        await self.store.stop()
        await self._loop.run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=False)

    def ack(self, record: Record) -> None:
        """``record`` is done and durable: its offset may be committed."""
        with self._acked_lock:
            tp = (record.topic, record.partition)
            if record.offset >= self._acked.get(tp, -1):
                self._acked[tp] = record.offset

    async def catch_up(self, partition: int, offsets: dict[str, int]) -> None:
        """Commit offsets a restored task's markers say are done (the store's catch_up)."""
        assert self._loop is not None
        tps = [TopicPartition(topic, partition, offset) for topic, offset in offsets.items()]
        await self._loop.run_in_executor(self._thread, self._commit_now, tps)

    def _on_loop(self, work: Awaitable[Any]) -> Any:
        """Run ``work`` on the event loop and wait for it (from the reader's thread)."""
        assert self._loop is not None

        async def wrapped() -> Any:
            return await work

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result()

    # --- On the reader's thread ------------------------------------------------------
    def _open(self) -> None:
        # The stage created its topics before the worker said Ready (agents/telemetry.py).
        names = [spec.name(self.settings) for spec in self.specs]
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap_servers,
                "group.id": self.group,
                "client.id": f"{self.group}-reader",
                "partition.assignment.strategy": "range",  # co-partitions the topics
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": round(self.settings.session_timeout_s * 1000),
                "heartbeat.interval.ms": round(self.settings.session_timeout_s * 200),
            },
            logger=CLIENT_LOG,
        )
        partitions_of(self.settings, names)  # subscribe once the metadata lists them all
        consumer.subscribe(names, on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._consumer = consumer

    def _poll(self) -> list[KafkaMessage]:
        consumer = self._consumer
        assert consumer is not None
        if time.monotonic() - self._committed_at >= self.settings.commit_interval_s:
            self._commit_acked(asynchronous=True)
        most = self.settings.batch_messages
        messages: list[KafkaMessage] = consumer.consume(most, timeout=0)
        if not messages:
            messages = consumer.consume(1, timeout=IDLE_WAIT_S)
            if messages:
                messages += consumer.consume(most - 1, timeout=0)
        return messages

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._generation += 1
        assigned = [(tp.topic, tp.partition) for tp in partitions]
        log.info("%s: assigned %s", self.group, sorted(assigned))

        async def assign() -> None:
            self.store.on_assigned(assigned, self._generation)

        self._on_loop(assign())

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [(tp.topic, tp.partition) for tp in partitions]
        log.info("%s: revoked %s", self.group, sorted(revoked))
        self._on_loop(self.store.on_revoked(revoked))  # commits what the tasks hold
        self._commit_acked(asynchronous=False, only=set(revoked))

    def _commit_acked(self, asynchronous: bool, only: set[tuple[str, int]] | None = None) -> None:
        self._committed_at = time.monotonic()
        with self._acked_lock:
            picked = {tp: o for tp, o in self._acked.items() if only is None or tp in only}
            for tp in picked:
                del self._acked[tp]
        if picked:
            offsets = [TopicPartition(t, p, o + 1) for (t, p), o in picked.items()]
            self._commit(offsets, asynchronous)

    def _commit_now(self, offsets: list[TopicPartition]) -> None:
        self._commit(offsets, asynchronous=False)

    def _commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert self._consumer is not None
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Behind is safe (the markers skip what is replayed); the next commit retries.
            log.info("%s: committing offsets failed: %s", self.group, exc)

    def _close(self) -> None:
        if self._consumer is not None:
            self._commit_acked(asynchronous=False)
            self._consumer.close()  # leaves the group (its revocation finds no task)
            self._consumer = None
