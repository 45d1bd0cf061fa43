"""Workarounds for Faust behaviour that is broken for Kestrel, each citing upstream.

Keep every such workaround here, so that it is found, and removed, in one place.
"""

from __future__ import annotations

import sys
from typing import Any

import faust
from faust.app.base import BootStrategy

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


class KestrelApp(faust.App):
    """``faust.App`` with Kestrel's workarounds.

    * It refuses to start when autodiscovery cannot import a module. Faust logs such
      an import error as a warning and starts the worker anyway, without that
      module's agents and tables: it says "Ready" and processes nothing. Upstream:
      https://github.com/faust-streaming/faust/issues/269 (open: "Need configurable
      onerror, or at least an option to exit when autodiscovery fails").
    * It never starts Faust's web server; see :class:`WithoutWebServer`.
    * It keeps no standby replicas of tables (``table_standby_replicas=0``). When a
      changelog partition that a worker followed as a standby becomes one of its
      active partitions at the next rebalance, Faust keeps the standby's read
      position in ``Recovery.standby_offsets`` (``on_rebalance`` pops only revoked
      partitions, and a standby is not "revoked"), and seeks the consumer there, to
      the high watermark, after seeking it to the start for the active recovery.
      The active recovery then waits forever ("No event received for active tp ...
      since recovery start", the symptom of
      https://github.com/faust-streaming/faust/issues/176, there with another
      cause). Seen in Kestrel's join-and-leave rebalance test; without standbys a
      worker taking a partition over rebuilds it from the changelog, which is what
      Kestrel's exactly-once design relies on anyway.
    """

    BootStrategy = WithoutWebServer

    def __init__(self, id: str, **options: Any) -> None:
        options.setdefault("table_standby_replicas", 0)
        super().__init__(id, **options)

    def _on_autodiscovery_error(self, name: str) -> None:
        error = sys.exc_info()[1]
        raise AutodiscoveryError(f"could not import {name}: {error!r}") from error


def set_local(
    table: faust.Table[bytes, bytes], key: bytes, value: bytes | None, partition: int
) -> None:
    """Put a record this worker wrote to ``table``'s changelog into its local copy.

    Not an upstream bug but a gap in Faust's API: a table learns of changelog records
    only through its own ``__setitem__`` (which also produces them, in Python, ~150 us
    each) or while recovering. Faust does not recover a changelog partition again
    when the worker keeps it across a rebalance, so records produced by another
    producer must reach the local copy here, or the table reads older than its own
    changelog. The in-memory store remembers each key's partition so that it can
    drop a partition's keys when that partition moves away (``_key_partition``,
    faust/stores/memory.py, ``on_recovery_completed``); it is kept in step too.
    """
    local: Any = table.data
    if value is None:
        local.pop(key, None)
    else:
        local[key] = value
    partitions = getattr(local, "_key_partition", None)
    if partitions is not None:
        if value is None:
            partitions.pop(key, None)
        else:
            partitions[key] = partition
