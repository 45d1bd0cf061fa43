"""Builds Kestrel's Faust app from the settings, and nothing else.

Run the stream worker with the Faust CLI::

    faust -A faust_app worker -l info

Agents and tables register themselves on ``app`` when the worker autodiscovers the
``agents`` and ``tables`` packages; nothing here imports them.
"""

from __future__ import annotations

from kestrel.faust_compat import KestrelApp
from kestrel.settings import get_settings

settings = get_settings()
worker_dir = (settings.data_dir / "faust" / settings.app_id("stream")).resolve()
# Faust creates only the last level of its datadir; the levels above are ours.
worker_dir.parent.mkdir(parents=True, exist_ok=True)

app = KestrelApp(
    settings.app_id("stream"),
    broker=settings.broker_url,
    store=settings.store,
    autodiscover=["agents", "tables"],
    origin="faust_app",
    datadir=str(worker_dir),
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.topic_replication,
    consumer_auto_offset_reset="earliest",
    broker_commit_interval=settings.commit_interval_s,
    # A killed worker's partitions move after this, not after Faust's default 60 s.
    broker_session_timeout=settings.session_timeout_s,
    broker_heartbeat_interval=settings.session_timeout_s / 5,
)
