"""Workarounds for Faust behaviour that is broken for Kestrel, each citing upstream.

Keep every such workaround here, so that it is found, and removed, in one place.
"""

from __future__ import annotations

import sys
from typing import Any

import faust
from faust.app.base import BootStrategy
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT

from kestrel.errors import KestrelError


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


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return CommittedReadsConsumerThread(self, loop=self.loop, beacon=self.beacon)


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
    """

    BootStrategy = WithoutWebServer

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)

    def _on_autodiscovery_error(self, name: str) -> None:
        error = sys.exc_info()[1]
        raise AutodiscoveryError(f"could not import {name}: {error!r}") from error
