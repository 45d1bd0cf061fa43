from __future__ import annotations

from pathlib import Path

import pytest

from kestrel.errors import SettingsError
from kestrel.settings import Settings, child_environment, load_settings


def test_defaults_describe_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KESTREL_BROKER_URL", "KESTREL_NAMESPACE", "KESTREL_KAFKA_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.broker_url == "kafka://127.0.0.1:9092"
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.topic("metrics.system") == "kestrel.metrics.system"
    assert settings.app_id("stream") == "kestrel-stream"


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KESTREL_BROKER_URL", "kafka://a:1;b:2")
    monkeypatch.setenv("KESTREL_NAMESPACE", "site-7")
    monkeypatch.setenv("KESTREL_TOPIC_PARTITIONS", "12")
    settings = load_settings()
    assert settings.bootstrap_servers == "a:1,b:2"
    assert settings.topic("deadletter") == "site-7.deadletter"
    assert settings.topic_partitions == 12


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KESTREL_KAFKA_PORT", "ninety"),
        ("KESTREL_BROKER_URL", "127.0.0.1:9092"),
        ("KESTREL_NAMESPACE", "has space"),
        ("KESTREL_FLUSH_INTERVAL_S", "-1"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert variable in str(info.value)
    assert repr(value) in str(info.value)


def test_child_environment_round_trips(tmp_path: Path) -> None:
    settings = load_settings(namespace="child", data_dir=tmp_path, topic_partitions=3)
    env = child_environment(settings, EXTRA="1")
    assert env["EXTRA"] == "1"
    kestrel_env = {
        k.removeprefix("KESTREL_").lower(): v for k, v in env.items() if k.startswith("KESTREL_")
    }
    assert Settings(**kestrel_env) == settings  # type: ignore[arg-type]
