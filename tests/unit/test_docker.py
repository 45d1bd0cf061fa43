"""Docker cannot run here, so the compose file is checked against the project itself."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path
from typing import Any

import faust
import pytest
import yaml

from kestrel.errors import SettingsError
from kestrel.settings import ENV_PREFIX, Settings, load_settings
from web.access import check_exposure

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker" / "docker-compose.yml").read_text())
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
OURS = {name: svc for name, svc in SERVICES.items() if "build" in svc}


def resolve(target: str) -> object:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def test_the_broker_is_a_kraft_apache_kafka() -> None:
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_there_are_project_services() -> None:
    assert {
        "stream-worker",
        "analytics-worker",
        "inference-worker",
        "cameras",
        "topics",
        "collector-system",
        "dashboard",
    } <= set(OURS)


@pytest.mark.parametrize("name", sorted(OURS))
def test_each_command_is_a_real_entry_point(name: str) -> None:
    command = OURS[name]["command"]
    program, args = command[0], command[1:]
    if program == "faust":
        app_path = args[args.index("-A") + 1]
        module, _, attr = app_path.partition(":")
        app = getattr(importlib.import_module(module), attr or "app")
        assert isinstance(app, faust.App)
        assert "worker" in args
    else:
        assert program in SCRIPTS, f"{program} is not a [project.scripts] entry"
        assert callable(resolve(SCRIPTS[program]))


@pytest.mark.parametrize("name", sorted(OURS))
def test_each_kestrel_variable_is_a_setting(name: str) -> None:
    for variable in OURS[name]["environment"]:
        if variable.startswith(ENV_PREFIX):
            assert variable.removeprefix(ENV_PREFIX).lower() in Settings.model_fields


def test_everything_the_dockerfile_copies_exists() -> None:
    for line in (REPO / "docker" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:  # --from: an earlier stage
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source


def test_the_published_dashboard_requires_a_token() -> None:
    """Compose publishes the dashboard on all interfaces: it must not start open."""
    dashboard = SERVICES["dashboard"]
    env = dashboard["environment"]
    assert env["KESTREL_WEB_HOST"] == "0.0.0.0" and dashboard["ports"]
    # ${VAR:?message}: compose refuses to start when the operator has not set it.
    assert env["KESTREL_WEB_TOKEN"].startswith("${KESTREL_WEB_TOKEN:?")
    with pytest.raises(SettingsError, match="KESTREL_WEB_TOKEN"):
        check_exposure(load_settings(web_host="0.0.0.0"))
    check_exposure(load_settings(web_host="0.0.0.0", web_token="x" * 32))
