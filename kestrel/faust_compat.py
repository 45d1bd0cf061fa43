"""Workarounds for Faust behaviour that is broken for Kestrel, each citing upstream.

Keep every such workaround here, so that it is found, and removed, in one place.
"""

from __future__ import annotations

import sys

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
    """

    BootStrategy = WithoutWebServer

    def _on_autodiscovery_error(self, name: str) -> None:
        error = sys.exc_info()[1]
        raise AutodiscoveryError(f"could not import {name}: {error!r}") from error
