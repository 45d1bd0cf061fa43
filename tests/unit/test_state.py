"""The state protocol's decisions, without a broker: what is acked, skipped, refused.

The protocol against the real broker (kills, rebalances, fencing) is tested in
``tests/integration``; here a fake transactional producer records what would be
written and fails as Kafka would.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from kestrel.errors import InvalidMessage
from kestrel.settings import load_settings
from kestrel.state import (
    MARKER_PREFIX,
    Restored,
    StateError,
    StateStore,
    Task,
    _verify,
    lagging,
    marker_key,
)
from kestrel.topics import DEADLETTER, METRICS_MODEL, STATE_WINDOWS

pytestmark = pytest.mark.timeout(10)
SETTINGS = load_settings(namespace="unit", data_dir=Path("/nonexistent"))
TOPIC = METRICS_MODEL.name(SETTINGS)


@dataclass
class FakeProducer:
    """Records produces; its commits fail with the errors queued in ``failures``."""

    failures: list[KafkaError] = field(default_factory=list)
    sent: list[tuple[str, bytes | None, bytes | None, dict[str, Any]]] = field(default_factory=list)
    committed: list[list[tuple[str, bytes | None, bytes | None, dict[str, Any]]]] = field(
        default_factory=list
    )
    pending: list[tuple[str, bytes | None, bytes | None, dict[str, Any]]] = field(
        default_factory=list
    )
    aborted: int = 0

    def produce(self, topic: str, value: bytes | None, key: bytes | None, **kw: Any) -> None:
        self.pending.append((topic, value, key, kw))

    def poll(self, timeout: float) -> int:
        return 0

    def commit_transaction(self, timeout: float) -> None:
        if self.failures:
            raise KafkaException(self.failures.pop(0))
        self.committed.append(self.pending)
        self.pending = []

    def abort_transaction(self, timeout: float) -> None:
        self.aborted += 1
        self.pending = []

    def begin_transaction(self) -> None:
        pass

    def flush(self, timeout: float) -> int:
        return 0


@dataclass
class Msg:
    offset: int
    value: bytes | None = b"{}"
    key: bytes | None = b"k"
    topic: str = TOPIC
    partition: int = 0
    generation_id: int | None = 1
    headers: Any = None


@dataclass
class Ev:
    message: Msg
    acked: bool = False

    def ack(self) -> None:
        self.acked = True


def make_store(apply_log: list[int] | None = None) -> StateStore[list[int]]:
    def persist(task: Task[list[int]]) -> None:
        for value in task.model:
            task.put(b"v", str(value).encode())
        task.model.clear()

    return StateStore(
        SETTINGS,
        app_id="unit-stream",
        name="windows",
        changelog=STATE_WINDOWS,
        inputs=[METRICS_MODEL],
        load=lambda restored: [],
        persist=persist,
        interval_s=1.0,
        deadletter=DEADLETTER.name(SETTINGS),
    )


def make_task(
    store: StateStore[list[int]], producer: FakeProducer, marker: int = -1
) -> Task[list[int]]:
    markers = {TOPIC: marker} if marker >= 0 else {}
    restored = Restored(0, {}, markers, {TOPIC: None}, 0, 0, 0.0)
    task = Task(store, 0, producer, [], restored, generation=1)  # type: ignore[arg-type]
    store.tasks[0] = task
    return task


def test_messages_are_acked_only_by_the_commit_that_writes_their_marker() -> None:
    store, producer = make_store(), FakeProducer()
    task = make_task(store, producer)
    events = [Ev(Msg(offset)) for offset in (0, 1, 2)]

    def apply(task: Task[list[int]], event: Any) -> None:
        task.model.append(event.message.offset)

    async def run() -> None:
        for event in events:
            await store.process(event, apply)
        assert not any(e.acked for e in events)
        await store.commit(task)

    asyncio.run(run())
    assert all(e.acked for e in events)
    [written] = producer.committed
    changelog = [(key, value) for topic, value, key, _ in written if topic == store.changelog]
    assert (marker_key(TOPIC), b'{"o":2}') in changelog
    assert changelog[:3] == [(b"v", b"0"), (b"v", b"1"), (b"v", b"2")], "state before marker"
    assert task.markers == {TOPIC: 2}


def test_a_replay_at_or_below_the_marker_is_skipped_and_acked() -> None:
    store, producer = make_store(), FakeProducer()
    task = make_task(store, producer, marker=5)
    seen: list[int] = []

    def apply(task: Task[list[int]], event: Any) -> None:
        seen.append(event.message.offset)

    events = [Ev(Msg(offset)) for offset in (4, 5, 6)]

    async def run() -> None:
        for event in events:
            await store.process(event, apply)
        await store.commit(task)

    asyncio.run(run())
    assert seen == [6]
    assert all(e.acked for e in events)
    assert store.stats["replayed"] == 2


def test_a_bad_message_and_a_crashing_one_go_to_the_dead_letters_and_the_stream_goes_on() -> None:
    store, producer = make_store(), FakeProducer()
    task = make_task(store, producer)

    def apply(task: Task[list[int]], event: Any) -> None:
        if event.message.offset == 0:
            raise InvalidMessage("bad_json", "not JSON")
        if event.message.offset == 1:
            raise OverflowError("a bug somewhere")
        task.model.append(event.message.offset)

    events = [Ev(Msg(offset, value=b"raw%d" % offset)) for offset in (0, 1, 2)]

    async def run() -> None:
        for event in events:
            await store.process(event, apply)
        await store.commit(task)

    asyncio.run(run())
    letters = [p for p in producer.committed[0] if p[0] == DEADLETTER.name(SETTINGS)]
    assert [(value, dict(kw["headers"])["kestrel.reason"]) for _, value, _, kw in letters] == [
        (b"raw0", b"bad_json"),
        (b"raw1", b"processing_error"),
    ]
    assert b"OverflowError" in dict(letters[1][3]["headers"])["kestrel.error"]
    assert all(e.acked for e in events)
    assert store.dead_letters == {"bad_json": 1, "processing_error": 1}


def test_a_fenced_task_is_dropped_and_acks_nothing() -> None:
    store = make_store()
    producer = FakeProducer([KafkaError(KafkaError.PRODUCER_FENCED, "fenced", fatal=True)])
    task = make_task(store, producer)
    event = Ev(Msg(0))

    async def run() -> None:
        await store.process(event, lambda task, event: None)
        await store.commit(task)

    asyncio.run(run())
    assert not event.acked
    assert task.closed and 0 not in store.tasks
    assert store.stats["fenced"] == 1


def test_a_broker_away_makes_the_commit_retry_until_it_succeeds() -> None:
    store = make_store()
    away = KafkaError(KafkaError._TRANSPORT, "broker down", retriable=True)
    producer = FakeProducer([away, away])
    task = make_task(store, producer)
    event = Ev(Msg(0))

    async def run() -> None:
        await store.process(event, lambda task, event: None)
        await store.commit(task)

    asyncio.run(run())
    assert event.acked
    assert len(producer.committed) == 1


def test_a_transaction_that_must_abort_stops_the_worker_and_acks_nothing() -> None:
    store = make_store()
    broken = KafkaError(KafkaError._MSG_TIMED_OUT, "undelivered", txn_requires_abort=True)
    producer = FakeProducer([broken])
    task = make_task(store, producer)
    event = Ev(Msg(0))

    async def run() -> None:
        await store.process(event, lambda task, event: None)
        await store.commit(task)

    with pytest.raises(StateError, match="replays from the last commit"):
        asyncio.run(run())
    assert not event.acked
    assert producer.aborted == 1


def test_state_keys_cannot_pose_as_markers() -> None:
    store, producer = make_store(), FakeProducer()
    task = make_task(store, producer)
    with pytest.raises(StateError, match="reserved"):
        task.put(MARKER_PREFIX + b"x", b"1")


@pytest.mark.parametrize(
    ("markers", "committed", "ok"),
    [
        ({}, {TOPIC: None}, True),  # a new deployment
        ({TOPIC: 9}, {TOPIC: 10}, True),  # the group committed exactly what the state covers
        ({TOPIC: 9}, {TOPIC: 4}, True),  # behind: the messages since are replayed and skipped
        ({TOPIC: 9}, {TOPIC: 11}, False),  # ahead: message 10 would be lost
        ({}, {TOPIC: 3}, False),  # no state at all, yet offsets: the changelog was lost
    ],
)
def test_a_restore_refuses_state_that_ends_before_the_committed_offset(
    markers: dict[str, int], committed: dict[str, int | None], ok: bool
) -> None:
    restored = Restored(0, {}, markers, committed, 42, 7, 0.1)
    if ok:
        _verify("windows", restored)
    else:
        with pytest.raises(StateError, match="would be lost"):
            _verify("windows", restored)


def test_processing_goes_on_during_a_commit_and_lands_in_the_next_one() -> None:
    store = make_store()

    class SlowCommit(FakeProducer):
        def __init__(self) -> None:
            super().__init__()
            self.entered = threading.Event()
            self.release = threading.Event()

        def commit_transaction(self, timeout: float) -> None:
            self.entered.set()
            assert self.release.wait(5)
            super().commit_transaction(timeout)

    producer = SlowCommit()
    task = make_task(store, producer)

    def apply(task: Task[list[int]], event: Any) -> None:
        task.model.append(event.message.offset)
        task.send("out", b"%d" % event.message.offset)

    first, second = Ev(Msg(0)), Ev(Msg(1))

    async def run() -> None:
        await store.process(first, apply)
        committing = asyncio.ensure_future(store.commit(task))
        await asyncio.get_running_loop().run_in_executor(None, producer.entered.wait, 5)
        await store.process(second, apply)  # while Kafka commits the first
        assert not first.acked and task.deferred, "the second's output waits"
        producer.release.set()
        await committing
        assert first.acked and not second.acked
        assert task.markers == {TOPIC: 0}, "the first commit covers only its snapshot"
        await store.commit(task)

    asyncio.run(run())
    assert second.acked and task.markers == {TOPIC: 1}
    outputs = [[v for t, v, _, _ in commit if t == "out"] for commit in producer.committed]
    assert outputs == [[b"0"], [b"1"]]


def test_a_restore_lists_the_inputs_whose_group_offset_is_behind_its_markers() -> None:
    restored = Restored(
        0,
        {},
        {"a": 9, "b": 4, "c": 7},
        {"a": 10, "b": 2, "c": None},
        30,
        3,
        0.1,
    )
    assert lagging(restored) == {"b": 5, "c": 8}  # a is where it should be
