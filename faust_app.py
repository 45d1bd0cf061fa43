"""Builds Kestrel's Faust app from the settings, and nothing else.

Run the stream worker with the Faust CLI::

    faust -A faust_app worker -l info

Agents and tables register themselves on ``app`` when the worker autodiscovers the
``agents`` and ``tables`` packages; nothing here imports them.
"""

from __future__ import annotations

import faust

from kestrel.settings import get_settings

settings = get_settings()
worker_dir = (settings.data_dir / "faust" / settings.app_id("stream")).resolve()
# Faust creates only the last level of its datadir; the levels above are ours.
worker_dir.parent.mkdir(parents=True, exist_ok=True)

app = faust.App(
    settings.app_id("stream"),
    broker=settings.broker_url,
    store=settings.store,
    autodiscover=["agents", "tables"],
    origin="faust_app",
    datadir=str(worker_dir),
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.topic_replication,
    table_cleanup_interval=settings.table_cleanup_interval_s,
    consumer_auto_offset_reset="earliest",
    # The dashboard is its own Starlette app; the worker's aiohttp pages are unused.
    web_enabled=False,
)
