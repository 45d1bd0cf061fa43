"""The state protocol: a stage's state, its outputs and its progress, durable together.

Every stateful stage (windows, tracking, analytics, the registry check) keeps its state
per input partition in memory and makes it durable through this module, which is Kafka
Streams' exactly-once design on Kestrel's terms. Nothing else writes a changelog.

* **A task per partition.** The worker that owns partition ``p`` of a stage's input
  topics (Faust's assignor co-partitions topics of equal partition count) runs task
  ``p``: a transactional producer with ``transactional.id = <app id>-<stage>-<p>``, the
  state restored from changelog partition ``p``, and a **marker** per input topic: the
  highest input offset whose effects are in the changelog.
* **A transaction per commit.** What a task sends between two commits (aggregates,
  results, alerts, late records, dead letters), the state that changed and the new
  markers go out in one Kafka transaction. A ``read_committed`` consumer (every Kestrel
  stage and the dashboard; downstream consumers should ask for it too) sees all of a
  commit or none of it. An input message is acked to Faust only after its transaction
  committed, so Faust never commits an offset that a marker does not cover.
* **Fencing.** A new owner's ``init_transactions`` bumps the producer epoch: the old
  owner (a worker that was killed, or a zombie that lost the partition without knowing)
  can commit nothing more, and its open transaction is aborted.
* **A verified restore.** Once it has fenced the old owner, a task reads its changelog
  partition (``read_committed``) from the start up to the end offset it found, so it
  holds every committed record and no other; then it checks, for each input topic, that
  the group's committed offset is at most marker + 1 (anything beyond means state was
  lost, and the task refuses to run). Until then nothing of that partition is processed.
  It logs the end offset, the records read, the markers and the committed offsets.
* **Replay.** Faust resumes each input partition from its committed offset; messages at
  or below the marker are skipped, so nothing counts twice, and nothing after the marker
  was acked, so nothing is lost.

A commit refused because the task was fenced drops the task: its messages are not acked,
and the rebalance that follows hands them to their owner. Any other failed commit stops
the worker (its memory is ahead of what is durable; a restart replays from the markers).
A broker that is away makes commits wait and retry, logged once when it starts failing
and once when it recovers.

Changelogs are compacted: stages write one record per state key and a tombstone when a
key is done with, so a restore reads the live keys plus the tail compaction has not
reached yet, however long the worker has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from kestrel.deadletter import DeadLetter
from kestrel.errors import InvalidMessage, KestrelError
from kestrel.settings import Settings
from kestrel.topics import TopicSpec, ensure_topics

log = logging.getLogger(__name__)
CLIENT_LOG = logging.getLogger("kestrel.librdkafka")  # librdkafka's own lines

MARKER_PREFIX = b"~offset|"
RESTORE_TIMEOUT_S = 120.0
COMMIT_TIMEOUT_S = 30.0
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}

M = TypeVar("M")


class StateError(KestrelError):
    """A task's state cannot be trusted, or could not be made durable."""


class Fenced(StateError):
    """Another worker owns the task now: this one must drop it."""


class Message(Protocol):
    topic: str
    partition: int
    offset: int
    generation_id: int | None
    key: bytes | None
    value: bytes | None
    headers: Any


class Event(Protocol):
    """What a stage hands the protocol: Faust's event, or anything shaped like it."""

    @property
    def message(self) -> Message: ...

    def ack(self) -> object: ...


@dataclass
class Restored:
    """What a restore read from one changelog partition."""

    partition: int
    records: dict[bytes, bytes]
    markers: dict[str, int]
    committed: dict[str, int | None]
    end_offset: int
    read: int
    seconds: float


def marker_key(topic: str) -> bytes:
    return MARKER_PREFIX + topic.encode()


class Task(Generic[M]):
    """One partition of one stage on this worker: its producer, state and progress."""

    def __init__(
        self,
        store: StateStore[M],
        partition: int,
        producer: Producer,
        model: M,
        restored: Restored,
        generation: int,
    ) -> None:
        self.store = store
        self.partition = partition
        self.producer = producer
        self.model = model
        self.generation = generation
        self.markers: dict[str, int] = dict(restored.markers)  # committed
        self.applied: dict[str, int] = dict(restored.markers)  # in the open transaction
        self.held: list[Event] = []
        self.lock = asyncio.Lock()
        self.sent = 0  # records in the open transaction
        self.committing = False  # a commit is in flight: outputs wait in ``deferred``
        self.deferred: list[tuple[str, bytes | None, bytes | None, dict[str, Any]]] = []
        self.commit_lock = asyncio.Lock()  # one commit at a time
        self.commit_seconds = 0.0  # how long the last commit took
        self.replayed = 0  # messages skipped as replays since the last commit
        self.last_commit = time.monotonic()
        self.commits = 0
        self.closed = False

    def seen(self, event: Event) -> bool:
        """Is this message's effect already in the state (a replay)?"""
        message = event.message
        return message.offset <= self.applied.get(message.topic, -1)

    def done(self, event: Event) -> None:
        """The message is applied (or skipped, or dead-lettered): ack it at the commit."""
        message = event.message
        if message.offset > self.applied.get(message.topic, -1):
            self.applied[message.topic] = message.offset
        self.held.append(event)
        self.store._work.set()

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Queue one output in the task's open transaction.

        While a commit is in flight the producer takes nothing: the output waits here
        and goes into the next transaction, with the message that caused it.
        """
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if headers:
            kwargs["headers"] = headers
        self.sent += 1
        if self.committing:
            self.deferred.append((topic, value, key, kwargs))
        else:
            self._produce(topic, value, key, kwargs)

    def _produce(
        self, topic: str, value: bytes | None, key: bytes | None, kwargs: dict[str, Any]
    ) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, **kwargs)
                break
            except BufferError:
                self.producer.poll(0.05)  # the queue is full: let deliveries drain
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() in _FENCED:
                    self.store._fenced(self, exc)
                    raise Fenced(str(error)) from exc
                if error.fatal():  # the producer is unusable: stop, never stall silently
                    self.store._fenced(self, exc)
                    self.store.fail(StateError(f"{self.store.name}[{self.partition}]: {error}"))
                    raise Fenced(str(error)) from exc
                raise

    def put(self, key: bytes, value: bytes | None) -> None:
        """Queue a state record (``None``: the key is done with) for the changelog."""
        if key.startswith(MARKER_PREFIX):
            raise StateError(f"state key {key!r} is reserved for the protocol's markers")
        self.send(self.store.changelog, value, key, partition=self.partition)

    def pending(self) -> bool:
        return bool(self.held) or self.sent > 0


class StateStore(Generic[M]):
    """The tasks of one stage on this worker, their restores and their commits.

    ``load(restored)`` builds the stage's model of a partition from its changelog
    records; ``persist(task)`` runs at every commit, under the task's lock, to send what
    is due (closed windows, say) and put the state that changed.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        app_id: str,
        name: str,
        changelog: TopicSpec,
        inputs: Sequence[TopicSpec],
        load: Callable[[Restored], M],
        persist: Callable[[Task[M]], None],
        interval_s: float,
        deadletter: str,
        group: str | None = None,
    ) -> None:
        self.settings = settings
        self.app_id = app_id
        #: The consumer group that reads the inputs (whose offsets a restore checks):
        #: the Faust app's, unless the stage reads its inputs itself (kestrel.reader).
        self.group = group or app_id
        self.name = name
        self.changelog_spec = changelog
        self.changelog = changelog.name(settings)
        self.inputs = {spec.name(settings) for spec in inputs}
        self.partitions = {spec.partition_count(settings) for spec in inputs}
        self.load = load
        self.persist = persist
        self.interval_s = interval_s
        self.deadletter = deadletter
        self.tasks: dict[int, Task[M]] = {}
        self.on_fatal: Callable[[BaseException], Awaitable[None]] | None = None
        #: Commits a restored partition's input offsets that the group left behind its
        #: markers (partition, {topic: offset}); set by tables.bind.
        self.catch_up: Callable[[int, dict[str, int]], Awaitable[None]] | None = None
        self._restoring: dict[int, asyncio.Future[Task[M] | None]] = {}
        self._assigned: set[int] = set()
        self._generation = 0
        self._committer: asyncio.Task[None] | None = None
        self._retrying_since: float | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._work = asyncio.Event()  # set when a task has something to commit
        self.stats: dict[str, Any] = {
            "commits": 0,
            "restores": 0,
            "fenced": 0,
            "replayed": 0,
            "not_ours": 0,
        }
        self.dead_letters: dict[str, int] = {}
        if len(self.partitions) != 1:
            raise StateError(f"{name}: input topics differ in partition count: {self.partitions}")

    # --- Lifecycle --------------------------------------------------------------------
    async def start(self, on_fatal: Callable[[BaseException], Awaitable[None]]) -> None:
        """Create the changelog (idempotent) and start the commit loop; call every start."""
        self.on_fatal = on_fatal
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._ensure_changelog)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(
                self._commit_forever(), name=f"{self.name}-commit"
            )

    def fail(self, error: BaseException) -> None:
        """Stop the worker (from code that cannot await): a restart replays exactly."""
        log.critical("%s: %s; stopping the worker", self.name, error)
        if self.on_fatal is not None:
            self._spawn(self.on_fatal(error))

    def _spawn(self, work: Awaitable[Any]) -> None:
        """Run ``work`` in the background, keeping a reference until it is done."""
        future = asyncio.ensure_future(work)
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    def on_assigned(self, partitions: Iterable[tuple[str, int]], generation: int) -> None:
        """Faust assigned these topic partitions: restore the tasks of ours, in the background."""
        mine = {p for topic, p in partitions if topic in self.inputs}
        self._generation = generation
        self._assigned = mine
        for p in sorted(mine):
            if p in self._restoring and not self._restoring[p].done():
                continue
            old = self.tasks.get(p)
            if old is not None:  # kept across the rebalance: restore anew, fencing whoever
                self._spawn(self._close(old))  # had it meanwhile
            self._restoring[p] = asyncio.ensure_future(self._restore(p, generation))

    async def on_revoked(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Faust is taking these away: commit what their tasks hold, then drop them."""
        gone = {p for topic, p in partitions if topic in self.inputs}
        self._assigned -= gone
        for p in sorted(gone):
            task = self.tasks.get(p)
            if task is not None:
                await self.commit(task)
                await self._close(task)

    async def stop(self) -> None:
        """Commit every task and close its producer (the worker is shutting down)."""
        for task in list(self.tasks.values()):
            await self.commit(task)
            await self._close(task)
        if self._committer is not None:
            self._committer.cancel()

    # --- Processing -------------------------------------------------------------------
    async def process(self, event: Event, apply: Callable[[Task[M], Event], None]) -> None:
        """Apply one message under the protocol: the stage boundary.

        A replay is skipped. ``apply`` may raise :class:`InvalidMessage` (the message
        goes to the dead letters with its reason) or anything else: a bug must not stop
        the stream, so that message goes to the dead letters with the exception and the
        stage goes on. Either way the message counts as done, and is acked at the
        commit that makes its effects (or its dead letter) durable.
        """

        def apply_one(task: Task[M], events: list[Event]) -> list[InvalidMessage | None]:
            try:
                apply(task, events[0])
            except (Fenced, InvalidMessage):
                raise
            except Exception as exc:
                log.exception(
                    "%s: processing a message failed; it goes to the dead letters", self.name
                )
                return [processing_error(exc)]
            return [None]

        await self.process_many([event], apply_one)

    async def process_many(
        self,
        events: Sequence[Event],
        apply: Callable[[Task[M], list[Event]], list[InvalidMessage | None]],
    ) -> None:
        """Apply a batch of messages under the protocol, each partition's under its lock.

        The same rules as :meth:`process`, message by message: replays are skipped (a
        message is a replay if an earlier one of the batch had its offset, too), and
        ``apply`` gets the rest of each partition's messages in order and says, for each,
        ``None`` or why it goes to the dead letters. If ``apply`` itself raises, every
        message it was given goes to the dead letters with the exception.
        """
        by_partition: dict[int, list[Event]] = {}
        for event in events:
            by_partition.setdefault(event.message.partition, []).append(event)
        for batch in by_partition.values():
            task = await self.task_for(batch[0])
            if task is None:
                self.stats["not_ours"] += len(batch)
                continue
            async with task.lock:
                if task.closed:
                    continue
                fresh: list[Event] = []
                for event in batch:
                    generation = event.message.generation_id
                    if generation is not None and generation < task.generation:
                        self.stats["not_ours"] += 1  # its new owner processes it
                    elif task.seen(event):
                        self.stats["replayed"] += 1
                        task.replayed += 1
                        task.done(event)
                    else:
                        task.done(event)  # acked at the commit of what follows
                        fresh.append(event)
                if not fresh:
                    continue
                try:
                    errors = apply(task, fresh)
                except Fenced:
                    continue
                except InvalidMessage as exc:  # only from a single message's apply
                    errors = [exc] * len(fresh)
                except Exception as exc:
                    log.exception(
                        "%s: processing %d messages failed; they go to the dead letters",
                        self.name,
                        len(fresh),
                    )
                    errors = [processing_error(exc)] * len(fresh)
                try:
                    for event, error in zip(fresh, errors, strict=True):
                        if error is not None:
                            self.dead_letter(task, event.message, error)
                except Fenced:
                    continue

    def dead_letter(self, task: Task[M], message: Message, error: InvalidMessage) -> None:
        """Send a rejected message, untouched, to the dead letters in the task's transaction."""
        letter = DeadLetter(
            reason=error.reason,
            error=error.detail[:2000],
            stage=self.name,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
        )
        log.warning(
            "dead letter from %s[%d]@%d (%s): %s",
            message.topic,
            message.partition,
            message.offset,
            self.name,
            error,
        )
        task.send(
            self.deadletter,
            message.value,
            message.key,
            headers=original_headers(message.headers) + letter.headers(),
        )
        self.dead_letters[error.reason] = self.dead_letters.get(error.reason, 0) + 1

    async def task_for(self, event: Event) -> Task[M] | None:
        """The task of the event's partition once it is restored; None if it is not ours.

        An event from before the last rebalance, or of a partition this worker does not
        (or no longer) own, is left unacked: its owner processes it.
        """
        message = event.message
        p = message.partition
        task = self.tasks.get(p)
        if task is None:
            restoring = self._restoring.get(p)
            if restoring is None:
                return None
            task = await asyncio.shield(restoring)
            if task is None:
                return None
        generation = message.generation_id
        if generation is not None and generation < task.generation:
            return None
        return task

    async def commit(self, task: Task[M]) -> None:
        """Persist the task's state and markers, commit its transaction, then ack.

        Processing goes on while Kafka commits: the state and markers written are those
        of the messages done when the commit began (its snapshot), and only those are
        acked; what later messages send waits for the next transaction (Task.send).
        """
        async with task.commit_lock:
            async with task.lock:
                if task.closed or not task.pending():
                    return
                self.persist(task)
                snapshot = dict(task.applied)
                for topic, offset in snapshot.items():
                    if offset != task.markers.get(topic):
                        task.send(
                            self.changelog,
                            orjson.dumps({"o": offset}),
                            marker_key(topic),
                            partition=task.partition,
                        )
                held, task.held = task.held, []
                replayed, task.replayed = task.replayed, 0
                task.sent = 0
                task.committing = True
            loop = asyncio.get_running_loop()
            started = time.monotonic()
            try:
                await loop.run_in_executor(None, self._commit_blocking, task)
            except Fenced as exc:
                self._fenced(task, exc)
                return
            task.commit_seconds = time.monotonic() - started
            async with task.lock:
                task.committing = False
                task.markers = snapshot
                for event in held:
                    event.ack()
                task.producer.begin_transaction()
                deferred, task.deferred = task.deferred, []
                try:
                    for topic, value, key, kwargs in deferred:
                        task._produce(topic, value, key, kwargs)
                except Fenced:
                    return
                task.commits += 1
                task.last_commit = time.monotonic()
            self.stats["commits"] += 1
            if replayed:
                log.info(
                    "%s[%d]: skipped %d replayed messages, at or below the markers",
                    self.name,
                    task.partition,
                    replayed,
                )
            log.debug(
                "%s[%d] committed: markers %s, %d messages acked",
                self.name,
                task.partition,
                snapshot,
                len(held),
            )

    def _commit_blocking(self, task: Task[M]) -> None:
        """Commit, retrying while the broker is away; runs in a thread."""
        backoff = 0.1
        while True:
            try:
                task.producer.commit_transaction(COMMIT_TIMEOUT_S)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() in _FENCED:
                    raise Fenced(str(error)) from exc
                if error.retriable() and not task.closed:
                    if self._retrying_since is None:
                        self._retrying_since = time.monotonic()
                        log.warning("%s: commits failing, retrying: %s", self.name, error.str())
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if error.txn_requires_abort():
                    task.producer.abort_transaction(COMMIT_TIMEOUT_S)
                raise StateError(
                    f"{self.name}[{task.partition}]: the transaction failed ({error.str()}); "
                    "the worker stops so that a restart replays from the last commit"
                ) from exc
            if self._retrying_since is not None:
                log.warning(
                    "%s: commits succeed again after %.1f s",
                    self.name,
                    time.monotonic() - self._retrying_since,
                )
                self._retrying_since = None
            return

    def _fenced(self, task: Task[M], error: BaseException) -> None:
        log.warning(
            "%s[%d] fenced: another worker owns it now (%s); dropping %d unacked messages",
            self.name,
            task.partition,
            error,
            len(task.held),
        )
        self.stats["fenced"] += 1
        task.closed = True
        task.held.clear()
        if self.tasks.get(task.partition) is task:
            del self.tasks[task.partition]
            self._restoring.pop(task.partition, None)

    async def _commit_forever(self) -> None:
        """Commit each task as soon as it has work and its interval since the last
        commit has passed: a frame that comes after a quiet spell is committed at once,
        a busy task at most once per interval."""
        try:
            while True:
                pending = [t for t in self.tasks.values() if t.pending()]
                if not pending:
                    self._work.clear()
                    await self._work.wait()
                    continue
                now = time.monotonic()
                due = [t for t in pending if now >= t.last_commit + self.interval_s]
                if not due:
                    next_at = min(t.last_commit + self.interval_s for t in pending)
                    await asyncio.sleep(max(next_at - now, 0.001))
                    continue
                for task in due:
                    await self.commit(task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s: commit failed; stopping the worker", self.name)
            if self.on_fatal is not None:
                await self.on_fatal(exc)

    # --- Restore ----------------------------------------------------------------------
    async def _restore(self, p: int, generation: int) -> Task[M] | None:
        loop = asyncio.get_running_loop()
        try:
            producer = await loop.run_in_executor(None, self._fence_others, p)
            restored = await loop.run_in_executor(None, self._read, p)
            _verify(self.name, restored)
            model = self.load(restored)
            producer.begin_transaction()
        except Exception as exc:
            log.exception("%s[%d]: restore failed; stopping the worker", self.name, p)
            if self.on_fatal is not None:
                await self.on_fatal(exc)
            return None
        task = Task(self, p, producer, model, restored, generation)
        if p not in self._assigned or generation != self._generation:
            await self._close(task)  # revoked while it restored
            return None
        self.tasks[p] = task
        self.stats["restores"] += 1
        log.info(
            "%s[%d] restored: %d records read from %s[%d] up to offset %d in %.2f s; "
            "markers %s; group committed %s",
            self.name,
            p,
            restored.read,
            self.changelog,
            p,
            restored.end_offset,
            restored.seconds,
            restored.markers,
            restored.committed,
        )
        behind = lagging(restored)
        if behind and self.catch_up is not None:
            try:
                await self.catch_up(p, behind)
            except Exception as exc:  # behind is safe: the next restore tries again
                log.warning("%s[%d]: could not commit %s: %s", self.name, p, behind, exc)
            else:
                log.info("%s[%d]: the group's offsets caught up to %s", self.name, p, behind)
        return task

    def _ensure_changelog(self) -> None:
        """Create the changelog if missing; refuse one partitioned unlike the inputs."""
        ensure_topics(self.settings, [self.changelog_spec])
        consumer = Consumer(
            {"bootstrap.servers": self.settings.bootstrap_servers, "group.id": self.app_id},
            logger=CLIENT_LOG,
        )
        try:
            found = consumer.list_topics(self.changelog, timeout=30).topics[self.changelog]
            wanted = next(iter(self.partitions))
            if found.partitions and len(found.partitions) != wanted:
                raise StateError(
                    f"{self.changelog} has {len(found.partitions)} partitions, its input "
                    f"topics {wanted}: state of partition p must live in changelog partition "
                    "p. Partition counts cannot change under a running deployment: start a "
                    "new KESTREL_NAMESPACE, or recreate the changelog with the inputs' count."
                )
        finally:
            consumer.close()

    def _fence_others(self, p: int) -> Producer:
        producer = Producer(
            {
                "bootstrap.servers": self.settings.bootstrap_servers,
                "transactional.id": f"{self.app_id}-{self.name}-{p}",
                "linger.ms": 5,
                "compression.type": "lz4",
                "message.max.bytes": 9 * 1024 * 1024 + 64 * 1024,
            },
            logger=CLIENT_LOG,
        )
        producer.init_transactions(RESTORE_TIMEOUT_S)
        return producer

    def _read(self, p: int) -> Restored:
        started = time.monotonic()
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap_servers,
                # The stage's own group, to read its committed offsets; this consumer
                # never subscribes, so it never joins the group.
                "group.id": self.group,
                "client.id": f"{self.app_id}-restore-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            },
            logger=CLIENT_LOG,
        )
        try:
            committed = {
                tp.topic: (tp.offset if tp.offset >= 0 else None)
                for tp in consumer.committed(
                    [TopicPartition(topic, p) for topic in sorted(self.inputs)], timeout=30
                )
            }
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.changelog, p), timeout=30
            )
            records, read = _read_to(consumer, self.changelog, p, high) if high > low else ({}, 0)
        finally:
            consumer.close()
        markers = {
            key[len(MARKER_PREFIX) :].decode(): int(orjson.loads(value)["o"])
            for key, value in records.items()
            if key.startswith(MARKER_PREFIX)
        }
        state = {k: v for k, v in records.items() if not k.startswith(MARKER_PREFIX)}
        return Restored(p, state, markers, committed, high, read, time.monotonic() - started)

    async def _close(self, task: Task[M]) -> None:
        task.closed = True
        if self.tasks.get(task.partition) is task:
            del self.tasks[task.partition]
        await asyncio.get_running_loop().run_in_executor(None, _abandon, task.producer)


def processing_error(exc: BaseException) -> InvalidMessage:
    """The dead letter's reason for a message whose processing raised ``exc``."""
    return InvalidMessage("processing_error", f"{type(exc).__name__}: {exc}")


def original_headers(headers: Any) -> list[tuple[str, bytes]]:
    """A message's own headers (aiokafka: pairs; a dict elsewhere), minus Kestrel's
    dead-letter ones, so that a dead letter carries them on as Kafka Connect's do."""
    pairs = headers.items() if isinstance(headers, dict) else (headers or [])
    return [
        (name, value)
        for name, value in pairs
        if value is not None and name not in DeadLetter.header_names()
    ]


def _read_to(consumer: Consumer, topic: str, p: int, end: int) -> tuple[dict[bytes, bytes], int]:
    """Every committed record of ``topic[p]`` below ``end``, latest value per key."""
    tp = TopicPartition(topic, p, OFFSET_BEGINNING)
    consumer.assign([tp])
    records: dict[bytes, bytes] = {}
    read = 0
    deadline = time.monotonic() + RESTORE_TIMEOUT_S
    while True:
        for msg in consumer.consume(10_000, timeout=0.2):
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise StateError(f"reading {topic}[{p}]: {error.str()}")
            key, value = msg.key(), msg.value()
            if key is None:
                continue
            if value is None:
                records.pop(key, None)
            else:
                records[key] = value
            read += 1
        position = consumer.position([TopicPartition(topic, p)])[0].offset
        if position >= end:
            return records, read
        if time.monotonic() > deadline:
            raise StateError(
                f"{topic}[{p}]: read to offset {position} of {end} in {RESTORE_TIMEOUT_S:g} s; "
                "another writer holds a transaction open on the changelog"
            )


def lagging(restored: Restored) -> dict[str, int]:
    """Input topics whose group offset is behind what the state covers: topic -> marker + 1.

    Behind is safe (the messages up to the marker are replayed and skipped), but a
    group offset that never catches up shows lag on an idle partition for ever and
    replays more at each restart; the store commits these (see StateStore.catch_up).
    """
    behind = {}
    for topic, marker in restored.markers.items():
        committed = restored.committed.get(topic)
        if committed is None or committed < marker + 1:
            behind[topic] = marker + 1
    return behind


def _verify(name: str, restored: Restored) -> None:
    """Refuse a partition whose group committed past what its state covers."""
    for topic, committed in restored.committed.items():
        marker = restored.markers.get(topic, -1)
        if committed is not None and committed > marker + 1:
            raise StateError(
                f"{name}[{restored.partition}]: the group committed {topic} up to offset "
                f"{committed}, but the state covers only up to {marker} (changelog end "
                f"{restored.end_offset}, {restored.read} records): messages "
                f"{marker + 1}..{committed - 1} would be lost. The changelog lost records, "
                "or the group's offsets come from another deployment: restore the changelog, "
                "or reset the group's offsets (or use a new KESTREL_NAMESPACE)."
            )


def _abandon(producer: Producer) -> None:
    """Abort whatever the producer has open and let it go (a closed task's producer)."""
    with contextlib.suppress(KafkaException):  # fenced or never begun: nothing to abort
        producer.abort_transaction(5)
    producer.flush(1)
