"""Workarounds for Faust behaviour that is broken for Kestrel, each citing upstream.

Keep every such workaround here, so that it is found, and removed, in one place. One
is a design of its own and lives in its module: Faust's slow path from Kafka to an
agent (https://github.com/robinhood/faust/issues/563) is why the windows stage reads
its inputs itself, in :mod:`kestrel.reader`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from time import monotonic
from typing import Any, cast

import faust
from faust.app.base import BootStrategy
from faust.sensors import Sensor
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message, TransportT

from kestrel.errors import KestrelError
from kestrel.logs import quiet_outages
from kestrel.topics import METADATA_WAIT_S

log = logging.getLogger(__name__)


class AutodiscoveryError(KestrelError):
    """A module of ``agents/`` or ``tables/`` failed to import when the worker started."""


class WithoutWebServer(BootStrategy):
    """Never start Faust's own aiohttp web server in a Kestrel worker.

    ``App(web_enabled=False)`` is not enough: the ``faust worker`` command overwrites
    ``conf.web_enabled`` with its ``--with-web/--without-web`` flag, which defaults to
    on (faust/cli/worker.py, ``_init_worker_options``). Every worker then binds port
    6066, so a second worker on the same host fails with "address already in use"
    (https://github.com/robinhood/faust/issues/332). Kestrel's pages are served by
    its own Starlette app; the boot strategy's ``enable_web`` wins over the flag.
    """

    enable_web = False


async def _quiet_outages() -> None:
    quiet_outages()


class CommittedReadsConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer, reading ``read_committed``, with Faust's assignor.

    Kestrel's stages write their outputs in Kafka transactions (:mod:`kestrel.state`);
    a consumer must skip aborted ones, or a crashed transaction's records count once
    from the abort and once from its replay. Faust sets ``isolation_level`` to
    ``read_committed`` only with ``processing_guarantee="exactly_once"``
    (faust/transport/drivers/aiokafka.py, ``_create_worker_consumer``), whose own
    transactions are broken upstream (duplicates after a kill:
    https://github.com/faust-streaming/faust/issues/517; crashes and duplicates on
    rebalance: https://github.com/faust-streaming/faust/issues/323).

    The same method picks a round-robin assignor when the app has no changelog tables,
    which Kestrel's apps no longer have; only Faust's own assignor co-partitions the
    topics of a stage (partition ``p`` of every input topic to one worker), which the
    state protocol's one-task-per-partition relies on. The aiokafka consumer is
    created, not started, by that method: both settings are set on it before it starts.
    ``tests/unit/test_faust_compat.py`` fails if they stop taking effect, and the
    integration tests read transactional topics.
    """

    async def subscribe(self, topics: Iterable[str]) -> None:
        """Subscribe once every topic is in the cluster's metadata, as the assignor sees it.

        Faust creates a worker's input topics just before it subscribes, and Kafka
        (KRaft) answers CreateTopics before the broker's metadata has them. Faust's
        assignor then drops a topic it cannot see ("Ignoring missing topic", a warning)
        and the group reads nothing of it until the consumer's metadata next refreshes
        (5 minutes): in CI an analytics worker started on a fresh namespace never
        read ``metrics.model`` nor ``metrics.ui``. Upstream:
        https://github.com/faust-streaming/faust/issues/643 ("App ignores topic that
        exists on Kafka", KRaft, open) and https://github.com/robinhood/faust/issues/384.
        ``test_subscribe_waits_until_the_metadata_has_every_topic`` in
        ``tests/unit/test_faust_compat.py`` fails if the wait stops working.
        """
        wanted = set(topics)
        await self.call_thread(self._until_in_metadata, wanted)
        await super().subscribe(wanted)

    async def _until_in_metadata(self, topics: set[str]) -> None:
        client = self._ensure_consumer()._client
        deadline = monotonic() + METADATA_WAIT_S
        while True:
            cluster = await client.fetch_all_metadata()
            missing = sorted(t for t in topics if not cluster.partitions_for_topic(t))
            if not missing:
                return
            if monotonic() > deadline:
                log.warning("subscribing although the metadata lacks %s", ", ".join(missing))
                return
            await asyncio.sleep(0.1)  # the broker applies the new topics' metadata soon

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> Any:
        consumer = super()._create_worker_consumer(transport)
        if not hasattr(consumer, "_isolation_level") or not hasattr(
            consumer, "_partition_assignment_strategy"
        ):
            raise RuntimeError(
                "aiokafka's consumer changed: Kestrel cannot make Faust read committed "
                "records only (see kestrel/faust_compat.py)"
            )
        consumer._isolation_level = "read_committed"
        self._assignor = self.app.assignor
        consumer._partition_assignment_strategy = [self.app.assignor]
        return consumer


class DeliveredOffsets(Sensor):
    """The offsets Faust handed to streams, per partition, in order (a Faust sensor)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.by_tp: dict[TP, deque[int]] = defaultdict(deque)

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        delivered = self.by_tp[tp]
        while delivered and delivered[-1] >= offset:
            delivered.pop()  # handed out again after a seek: they come again, in order
        delivered.append(offset)


def committable(delivered: deque[int], acked: set[int]) -> int | None:
    """The offset to commit: just past the longest run of delivered, acked messages.

    Offsets never delivered (transaction markers, compacted records) are not waited
    for; consumes the run from ``delivered`` and ``acked``.
    """
    last = None
    while delivered and delivered[0] in acked:
        last = delivered.popleft()
        acked.discard(last)
    if last is None:
        return None
    for offset in [o for o in acked if o <= last]:
        acked.discard(offset)  # acked twice, or before this consumer tracked it
    return last + 1


class _Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with Kestrel's two consumer workarounds.

    * It reads committed records only, with Faust's assignor: see
      :class:`CommittedReadsConsumerThread`.
    * It commits past offsets that no message was delivered at. Faust's
      ``Consumer._new_offset`` commits the first run of consecutive acked offsets and
      registers gaps only between messages read one after the other
      (``_drain_messages``), which misses the gaps a transaction's commit marker
      leaves after each batch: on a topic written in transactions its commits
      advanced by about one record per commit interval (measured: 1 record/s against
      18 written), so lag and the replay after a restart grew without bound. Upstream:
      https://github.com/faust-streaming/faust/issues/606 (open) and
      https://github.com/robinhood/faust/issues/401 (gaps from exactly-once
      producers). Here the offset to commit comes from the offsets actually delivered
      (:class:`DeliveredOffsets`) and acked. ``test_a_worker_commits_past_transaction_markers``
      in ``tests/integration/test_telemetry.py`` fails without it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delivered = DeliveredOffsets()
        self.app.sensors.add(self.delivered)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return CommittedReadsConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: TP) -> int | None:
        delivered = self.delivered.by_tp[tp]
        done = self._committed_offset.get(tp)
        while delivered and done is not None and delivered[0] < done:
            # Committed already (commit_done, after a restore): Faust does not record
            # acks below its committed offset, so these would block the run for ever.
            delivered.popleft()
        offset = committable(delivered, self._acked_index[tp])
        # Faust's own list of the same acked offsets, kept in step (it only grows).
        index = self._acked_index[tp]
        self._acked[tp] = [o for o in self._acked[tp] if o in index]
        return offset

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self.delivered.by_tp.pop(tp, None)
        await super().on_partitions_revoked(revoked)


async def commit_done(app: faust.App, offsets: Mapping[TP, int]) -> None:
    """Commit input offsets that a restored state's markers say are done.

    Faust loses the acks of messages whose partition is revoked while their commit is
    in flight, and when the partition comes back to the same worker it neither
    delivers them again nor commits past them: the group's offset stays behind for
    ever (seen in the fault matrix's ``leave`` case, 1 run in 40: the ``cameras``
    partition stuck two records behind its marker, so the group never caught up).
    Upstream: https://github.com/robinhood/faust/issues/681 (open, "Offset not
    committed after partition returned back to worker after 2 rebalances") and
    https://github.com/faust-streaming/faust/issues/318. The state protocol knows
    better: its markers record what is done, so the store commits past them after a
    restore (:func:`kestrel.state.lagging`). In ``tests/unit/test_faust_compat.py``,
    ``test_commit_done_commits_through_faust_and_later_commits_never_go_behind`` fails
    if Faust's consumer changes under it.
    """
    consumer = cast(faust_aiokafka.Consumer, app.consumer)
    await consumer._commit(dict(offsets))
    committed = consumer._committed_offset
    for tp, offset in offsets.items():
        current = committed.get(tp)
        if current is None or current < offset:
            committed[tp] = offset  # Faust's own record, so it never commits behind it


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class KestrelApp(faust.App):
    """``faust.App`` with Kestrel's workarounds.

    * It refuses to start when autodiscovery cannot import a module. Faust logs such
      an import error as a warning and starts the worker anyway, without that
      module's agents and tables: it says "Ready" and processes nothing. Upstream:
      https://github.com/faust-streaming/faust/issues/269 (open: "Need configurable
      onerror, or at least an option to exit when autodiscovery fails").
    * It never starts Faust's web server; see :class:`WithoutWebServer`.
    * Its consumer reads committed records only, and Faust's co-partitioning assignor
      assigns its partitions; see :class:`CommittedReadsConsumerThread`.
    * Once the worker runs, a broker outage is logged once when it starts and once
      when it ends (:mod:`kestrel.logs`), not at every retry of every client.
    """

    BootStrategy = WithoutWebServer

    def __init__(self, id: str, **options: Any) -> None:
        super().__init__(id, **options)
        # App tasks start with the worker, after Faust has configured logging.
        self.task(_quiet_outages)

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)

    def _on_autodiscovery_error(self, name: str) -> None:
        error = sys.exc_info()[1]
        raise AutodiscoveryError(f"could not import {name}: {error!r}") from error
