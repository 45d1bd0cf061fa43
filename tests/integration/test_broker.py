"""The local broker's own tool runs: formatting storage with Kafka's real StorageTool."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestrel import broker
from kestrel.broker import BrokerConfig, LocalKafka, fetch_jars
from kestrel.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_storage_formats_with_a_cluster_id_that_starts_with_a_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # base64url ids begin with "-" one time in 64; the tool must not read it as an option.
    monkeypatch.setattr(broker, "_kafka_cluster_id", lambda: "-3kJbVq4RkOZ1i0tU7o0ZQ")
    defaults = load_settings()
    cfg = BrokerConfig(
        version=defaults.kafka_version,
        port=1,
        controller_port=2,
        data_dir=tmp_path,
        cache_dir=defaults.cache_dir,
    )
    fetch_jars(cfg.cache_dir, cfg.version)
    LocalKafka(cfg).format_storage()
    meta = (tmp_path / "logs" / "meta.properties").read_text()
    assert "cluster.id=-3kJbVq4RkOZ1i0tU7o0ZQ" in meta
