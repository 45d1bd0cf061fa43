"""Kestrel's topics: names, partitioning, retention, and who writes and reads them.

Every topic lives under the deployment's namespace (``KESTREL_NAMESPACE``), so two
deployments, or two test runs, share a cluster without sharing a topic. Faust
agents declare the topics they read from this catalogue; producers that may start
before any worker call :func:`ensure_topics` (``kestrel-topics create``) first.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kestrel.errors import BrokerError
from kestrel.settings import Settings, get_settings

if TYPE_CHECKING:
    import faust

log = logging.getLogger(__name__)
#: librdkafka's own log lines (kestrel.logs counts them during an outage).
CLIENT_LOG = logging.getLogger("kestrel.librdkafka")
METADATA_WAIT_S = 30.0  # how long a reader or subscription waits for new topics' metadata


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the catalogue, without its namespace."""

    suffix: str
    doc: str
    key: str
    compacted: bool = False
    #: None: the deployment's KESTREL_TOPIC_PARTITIONS.
    partitions: int | None = None
    config: Mapping[str, str] = field(default_factory=dict)

    def name(self, settings: Settings) -> str:
        return settings.topic(self.suffix)

    def partition_count(self, settings: Settings) -> int:
        return self.partitions or settings.topic_partitions

    def kafka_config(self) -> dict[str, str]:
        cfg = {"cleanup.policy": "compact" if self.compacted else "delete"}
        cfg.update(self.config)
        return cfg


METRICS_SYSTEM = TopicSpec(
    "metrics.system",
    doc="System collector samples (10 Hz): the digest's envelope, JSON.",
    key="source",
)
METRICS_MODEL = TopicSpec(
    "metrics.model",
    doc="Model collector samples (up to 60 Hz) from inference workers and model servers.",
    key="source",
)
METRICS_UI = TopicSpec(
    "metrics.ui",
    doc="Dashboard UX samples (60 Hz) reported by the browser.",
    key="source",
)
METRICS_AGGREGATES = TopicSpec(
    "metrics.aggregates",
    doc="Final windowed aggregates, one per (source, field, window), emitted on close.",
    key="source|field|window|window_start_ms",
    compacted=True,
)
METRICS_LATE = TopicSpec(
    "metrics.late",
    doc="Samples that came after their window closed (beyond grace): counted, kept here.",
    key="source",
)
METRICS_ENERGY = TopicSpec(
    "metrics.energy",
    doc="Each model message's latest sample with its energy mapping (energy_visual, 0..1).",
    key="source",
)
ALERTS = TopicSpec(
    "alerts",
    doc="Alert starts and ends (state active/cleared) from rules, anomalies and patterns.",
    key="alert_id",
    config={"retention.ms": str(7 * 24 * 3600 * 1000)},
)
ANALYTICS_TEMPORAL = TopicSpec(
    "analytics.temporal",
    doc="Each watched field's regime (attractor) and pattern matches, every few seconds.",
    key="source|field",
    compacted=True,
)
CAMERAS = TopicSpec(
    "cameras",
    doc="The camera registry: each camera's config, a tombstone when it is removed.",
    key="camera_id",
    compacted=True,
    partitions=1,
)
CAMERA_FRAMES = TopicSpec(
    "camera.frames",
    doc="Raw JPEG frames; frame id, capture time, sequence and size in headers.",
    key="camera_id",
    config={"retention.ms": str(3600 * 1000), "max.message.bytes": str(9 * 1024 * 1024)},
)
CAMERA_DETECTIONS = TopicSpec(
    "camera.detections",
    doc="The inference group's detections per frame (JSON), for the tracking stage.",
    key="camera_id",
)
CAMERA_RESULTS = TopicSpec(
    "camera.results",
    doc="Per-frame results: tracked objects, counts, zones, line crossings (JSON).",
    key="camera_id",
)
METRICS_CAMERA = TopicSpec(
    "metrics.camera",
    doc="Per-frame object counts per class of each camera, windowed like any metric.",
    key="source",
)
DEADLETTER = TopicSpec(
    "deadletter",
    doc="Messages that failed validation: original key and value, reason in headers.",
    key="original key",
    partitions=1,
    # Big enough for a rejected frame: a dead letter keeps the original value whole.
    config={"retention.ms": str(7 * 24 * 3600 * 1000), "max.message.bytes": str(9 * 1024 * 1024)},
)

# On-demand analysis (kestrel.ondemand): one request topic per priority lane, so a flood
# in one lane never sits in front of another's requests in a partition.
_REQUEST_CONFIG = {"retention.ms": str(3600 * 1000), "max.message.bytes": str(12 * 1024 * 1024)}


def _lane(lane: str) -> TopicSpec:
    return TopicSpec(
        f"analysis.requests.{lane}",
        doc=f"On-demand analysis requests of the {lane} lane (JSON, the image base64).",
        key="request_id",
        config=_REQUEST_CONFIG,
    )


ANALYSIS_REQUESTS = tuple(_lane(lane) for lane in ("urgent", "high", "normal", "low"))
ANALYSIS_CANCEL = TopicSpec(
    "analysis.cancel",
    doc="Cancels of on-demand requests; every inference worker reads all of it.",
    key="request_id",
    partitions=1,
    config={"retention.ms": str(3600 * 1000)},
)
ANALYSIS_EVENTS = TopicSpec(
    "analysis.events",
    doc="Each on-demand request's events, numbered, in order: phases, tokens, its end.",
    key="request_id",
    config={"retention.ms": str(24 * 3600 * 1000)},
)

# Changelogs of the stateful stages (kestrel.state): compacted, with segments rolled
# each minute so that compaction keeps up and a restore reads little more than the
# live keys; records up to 8 MB (a source with many fields keeps many sketches).
_CHANGELOG = {
    "segment.ms": str(60_000),
    "min.cleanable.dirty.ratio": "0.1",
    "max.message.bytes": str(8 * 1024 * 1024),
}
STATE_WINDOWS = TopicSpec(
    "state.windows",
    doc="Changelog of the windows stage: each source's open windows and rate counts.",
    key="s|topic|source, t|topic, ~offset|topic",
    compacted=True,
    config=_CHANGELOG,
)
STATE_TRACKS = TopicSpec(
    "state.tracks",
    doc="Changelog of the tracking stage: each camera's tracker, line totals, recent frames.",
    key="camera id, ~offset|topic",
    compacted=True,
    config=_CHANGELOG,
)
STATE_ANALYTICS = TopicSpec(
    "state.analytics",
    doc="Changelog of the analytics stage: each source's rule state, baselines, alerts.",
    key="source, ~offset|topic",
    compacted=True,
    config=_CHANGELOG,
)
STATE_REGISTRY = TopicSpec(
    "state.registry",
    doc="Changelog of the registry check: its progress through the cameras topic.",
    key="~offset|topic",
    compacted=True,
    partitions=1,
    config=_CHANGELOG,
)

COLLECTOR_TOPICS: tuple[TopicSpec, ...] = (
    METRICS_SYSTEM,
    METRICS_MODEL,
    METRICS_UI,
    METRICS_CAMERA,
)
CATALOGUE: tuple[TopicSpec, ...] = (
    *COLLECTOR_TOPICS,
    METRICS_AGGREGATES,
    METRICS_LATE,
    METRICS_ENERGY,
    ALERTS,
    ANALYTICS_TEMPORAL,
    CAMERAS,
    CAMERA_FRAMES,
    CAMERA_DETECTIONS,
    CAMERA_RESULTS,
    DEADLETTER,
    *ANALYSIS_REQUESTS,
    ANALYSIS_CANCEL,
    ANALYSIS_EVENTS,
    STATE_WINDOWS,
    STATE_TRACKS,
    STATE_ANALYTICS,
    STATE_REGISTRY,
)


def faust_topic(app: faust.App, settings: Settings, *specs: TopicSpec) -> faust.TopicT:
    """Declare ``specs`` (of one shape) as a Faust topic of raw bytes that Faust creates.

    ``internal=True`` makes the worker create the topics it reads, with the
    catalogue's partitions and config, before it subscribes: Faust otherwise ignores a
    topic that does not exist yet and never reads it. Topics it only writes are never
    subscribed, so a start-up task declares them too; otherwise the first send would
    auto-create them with the broker's defaults (one partition, no compaction).
    """
    first = specs[0]
    topic = app.topic(
        *(spec.name(settings) for spec in specs),
        key_serializer="raw",
        value_serializer="raw",
        partitions=first.partition_count(settings),
        replicas=settings.topic_replication,
        config=first.kafka_config(),
        internal=True,
    )

    async def declare() -> None:
        await topic.maybe_declare()

    app.task(declare)
    return topic


def ensure_topics(
    settings: Settings, specs: Iterable[TopicSpec] = CATALOGUE, timeout_s: float = 30.0
) -> list[str]:
    """Create whichever of ``specs`` do not exist yet; return the names created."""
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers}, logger=CLIENT_LOG)
    wanted = [
        NewTopic(
            spec.name(settings),
            num_partitions=spec.partition_count(settings),
            replication_factor=settings.topic_replication,
            config=spec.kafka_config(),
        )
        for spec in specs
    ]
    created: list[str] = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except Exception as exc:
            error = exc.args[0] if exc.args else None
            if getattr(error, "code", lambda: None)() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise BrokerError(f"could not create topic {name}: {exc}") from exc
    if created:
        log.info("created topics: %s", ", ".join(created))
    return created


def partitions_of(
    settings: Settings, names: Iterable[str], timeout_s: float = METADATA_WAIT_S
) -> dict[str, list[int]]:
    """The partitions each of ``names`` has on the broker, once its metadata lists them.

    KRaft answers CreateTopics before its metadata lists the new topics: a group that
    subscribes meanwhile gets none of their partitions until its next metadata refresh
    (5 minutes), and a reader that assumes the catalogue's count waits forever on a
    partition a topic auto-created by a producer lacks. A topic still missing after
    ``timeout_s`` is left out.
    """
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers}, logger=CLIENT_LOG)
    wanted = list(names)
    deadline = time.monotonic() + timeout_s
    while True:
        found = admin.list_topics(timeout=10).topics
        listed = {n: sorted(found[n].partitions) for n in wanted if n in found}
        missing = [n for n in wanted if not listed.get(n)]
        if not missing or time.monotonic() > deadline:
            if missing:
                log.warning("the metadata still lacks %s", ", ".join(missing))
            return {n: parts for n, parts in listed.items() if parts}
        time.sleep(0.1)  # the broker applies the new topics' metadata soon


def main(argv: list[str] | None = None) -> int:
    """``kestrel-topics create|list``: the catalogue on the configured cluster."""
    parser = argparse.ArgumentParser(prog="kestrel-topics")
    parser.add_argument("command", choices=["create", "list"])
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "create":
        try:
            created = ensure_topics(settings)
        except BrokerError as exc:
            print(f"kestrel-topics: {exc}", file=sys.stderr)
            return 1
        print(f"{len(created)} created, {len(CATALOGUE) - len(created)} already there")
    else:
        for spec in CATALOGUE:
            print(f"{spec.name(settings):40} key={spec.key:30} {spec.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
