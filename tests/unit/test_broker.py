from __future__ import annotations

import base64
import socket
from pathlib import Path

import pytest

from kestrel.broker import (
    BrokerConfig,
    LocalKafka,
    _kafka_cluster_id,
    port_is_free,
    render_server_properties,
)
from kestrel.errors import BrokerError


def config(tmp_path: Path, port: int = 19092) -> BrokerConfig:
    return BrokerConfig(
        version="4.3.1", port=port, controller_port=port + 1, data_dir=tmp_path, cache_dir=tmp_path
    )


def test_server_properties_are_a_single_kraft_node_on_loopback(tmp_path: Path) -> None:
    props = dict(
        line.split("=", 1) for line in render_server_properties(config(tmp_path)).splitlines()
    )
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["log.dirs"] == str((tmp_path / "logs").resolve())
    assert props["offsets.topic.replication.factor"] == "1"


def test_cluster_id_is_16_bytes_of_urlsafe_base64() -> None:
    cluster_id = _kafka_cluster_id()
    assert len(cluster_id) == 22
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_start_refuses_a_busy_port_and_says_which_setting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        with pytest.raises(BrokerError, match="KESTREL_KAFKA_PORT"):
            LocalKafka(config(tmp_path, port)).start()


def test_missing_jars_say_how_to_fetch_them(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="kestrel-broker fetch"):
        LocalKafka(config(tmp_path, 1)).format_storage()
