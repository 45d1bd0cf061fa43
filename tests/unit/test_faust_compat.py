from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

import pytest
from faust.types import TP

from kestrel.faust_compat import (
    AutodiscoveryError,
    DeliveredOffsets,
    KestrelApp,
    commit_done,
    committable,
)


def test_an_import_error_during_autodiscovery_stops_the_worker() -> None:
    app = KestrelApp("compat-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    with pytest.raises(AutodiscoveryError, match=r"agents\.broken.*ModuleNotFoundError"):
        try:
            import agents.broken  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            app._on_autodiscovery_error("agents.broken")


def test_the_worker_starts_no_web_server_whatever_the_cli_flag() -> None:
    app = KestrelApp("compat-web", broker="kafka://127.0.0.1:1")
    app.conf.web_enabled = True  # what `faust worker` does without --without-web
    assert app.boot_strategy._should_enable_web() is False


def test_the_commit_offset_skips_offsets_no_message_was_delivered_at() -> None:
    # A topic written in transactions: a commit marker after every record.
    delivered = deque([0, 2, 4, 6, 8])
    acked = {0, 2, 6}
    assert committable(delivered, acked) == 3  # past 0 and 2; 4 is not acked yet
    assert list(delivered) == [4, 6, 8]
    acked |= {4, 8}
    assert committable(delivered, acked) == 9
    assert not delivered and not acked
    assert committable(delivered, acked) is None  # nothing new: nothing to commit


def test_offsets_delivered_again_after_a_seek_are_tracked_once() -> None:
    sensor = DeliveredOffsets()
    tp = TP("t", 0)
    for offset in (10, 12, 14, 16):
        sensor.on_message_in(tp, offset, None)  # type: ignore[arg-type]
    for offset in (12, 14):  # the consumer was sought back to 12
        sensor.on_message_in(tp, offset, None)  # type: ignore[arg-type]
    assert list(sensor.by_tp[tp]) == [10, 12, 14]


def test_commit_done_commits_through_faust_and_later_commits_never_go_behind() -> None:
    """The workaround for robinhood/faust#681 against Faust's real consumer class."""
    app = KestrelApp("compat-commit", broker="kafka://127.0.0.1:1")
    consumer: Any = app.consumer  # Kestrel's _Consumer; nothing connects until started
    sent: list[Mapping[TP, int]] = []

    async def commit(offsets: Mapping[TP, int]) -> bool:
        sent.append(dict(offsets))
        return True

    consumer._thread.commit = commit  # where Faust's _commit sends it (aiokafka)
    tp = TP("ns.cameras", 0)
    asyncio.run(commit_done(app, {tp: 2}))
    assert sent == [{tp: 2}] and consumer._committed_offset[tp] == 2
    # Replays below it come again and are acked; Faust records no acks below its
    # committed offset, so they must not hold the next commit back.
    for offset in (0, 1, 2, 3):
        consumer.delivered.on_message_in(tp, offset, None)
    consumer._acked_index[tp].update({2, 3})
    assert consumer._new_offset(tp) == 4


@pytest.mark.asyncio
async def test_subscribe_waits_until_the_metadata_has_every_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker answers a topic's creation before its metadata has it: the consumer
    subscribes only once a metadata fetch (aiokafka's own client) lists every topic."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.cluster import ClusterMetadata
    from faust.transport.drivers import aiokafka as faust_aiokafka

    from kestrel.faust_compat import CommittedReadsConsumerThread

    assert callable(AIOKafkaClient.fetch_all_metadata)  # what the wait asks

    class Cluster:
        def __init__(self, topics: set[str]) -> None:
            self.topics = topics

        def partitions_for_topic(self, topic: str) -> set[int] | None:
            return {0, 1} if topic in self.topics else None

    assert callable(ClusterMetadata.partitions_for_topic)
    fetches = [Cluster({"a"}), Cluster({"a"}), Cluster({"a", "b"})]
    seen: list[str] = []

    class Client:
        async def fetch_all_metadata(self) -> Cluster:
            seen.append("metadata")
            return fetches.pop(0)

    class Consumer:
        _client = Client()

    async def subscribed(self: Any, topics: Any) -> None:
        seen.append(f"subscribe {sorted(topics)}")

    async def call_thread(fun: Any, *args: Any, **kwargs: Any) -> Any:
        return await fun(*args, **kwargs)

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "subscribe", subscribed)
    thread = object.__new__(CommittedReadsConsumerThread)
    thread._ensure_consumer = lambda: Consumer()  # type: ignore[method-assign]
    thread.call_thread = call_thread  # type: ignore[method-assign]
    await asyncio.wait_for(thread.subscribe(["a", "b"]), 5)
    assert seen == ["metadata", "metadata", "metadata", "subscribe ['a', 'b']"]
