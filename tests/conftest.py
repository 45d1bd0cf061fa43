"""Fixtures: the project's own Kafka broker, once per session, on free ports.

Integration tests ask for ``kafka`` (the broker) and ``settings`` (a fresh uuid
namespace, so topics and consumer groups are never shared between tests). Unit
tests ask for neither and run without a broker.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kestrel.broker import BrokerConfig, LocalKafka, fetch_jars
from kestrel.errors import BrokerError
from kestrel.settings import Settings, load_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A real single-node KRaft broker for the whole session; its log on failure."""
    defaults = load_settings()
    cfg = BrokerConfig(
        version=defaults.kafka_version,
        port=free_port(),
        controller_port=free_port(),
        data_dir=tmp_path_factory.mktemp("kafka"),
        cache_dir=defaults.cache_dir,
        heap_mb=512,
    )
    fetch_jars(cfg.cache_dir, cfg.version)
    broker = LocalKafka(cfg)
    try:
        broker.start(ready_timeout_s=90)
    except BrokerError as exc:
        pytest.fail(f"the test broker did not start: {exc}")
    try:
        yield broker
    finally:
        broker.stop()


def settings_for(kafka: LocalKafka, data_dir: Path, **overrides: object) -> Settings:
    """Settings for one test: its own namespace and data dir on the session broker."""
    values: dict[str, object] = {
        "broker_url": f"kafka://{kafka.cfg.bootstrap_servers}",
        "namespace": f"t{uuid.uuid4().hex[:12]}",
        "data_dir": data_dir,
        "topic_partitions": 2,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def settings(kafka: LocalKafka, tmp_path: Path) -> Settings:
    return settings_for(kafka, tmp_path)
