"""Builds Kestrel's Faust apps from the settings, and nothing else.

Each worker role is its own Faust app, so its own consumer group, scaled on its own:

    faust -A faust_app worker -l info              # stream: windows, aggregates, tracking
    faust -A faust_app:analytics worker -l info    # analytics: rules, anomalies, alerts
    faust -A faust_app:inference worker -l info    # inference: frames -> detections

An app autodiscovers only its own modules of ``agents/`` and ``tables/``, where its
agents and tables register themselves; nothing here imports them.
"""

from __future__ import annotations

from typing import Any

from kestrel.faust_compat import KestrelApp
from kestrel.settings import get_settings

settings = get_settings()


def make_app(role: str, modules: list[str], **options: Any) -> KestrelApp:
    """The Faust app of one worker role; its id (and consumer group) is ``<ns>-<role>``."""
    worker_dir = (settings.data_dir / "faust" / settings.app_id(role)).resolve()
    # Faust creates only the last level of its datadir; the levels above are ours.
    worker_dir.parent.mkdir(parents=True, exist_ok=True)
    return KestrelApp(
        settings.app_id(role),
        broker=settings.broker_url,
        autodiscover=modules,
        origin="faust_app",
        datadir=str(worker_dir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        # A killed worker's partitions move after this, not after Faust's default 60 s.
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 5,
        **options,
    )


app = make_app("stream", ["agents.telemetry", "agents.tracking", "agents.registry"])
analytics = make_app("analytics", ["agents.analytics"])
# Frames are big: a small stream buffer keeps an inference worker's memory bounded
# (frames wait in per-camera queues of their own, where the oldest are dropped).
inference = make_app("inference", ["agents.inference"], stream_buffer_maxsize=32)
