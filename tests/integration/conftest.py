"""Fixtures shared by the on-demand analysis modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kestrel.broker import LocalKafka
from kestrel.settings import Settings
from kestrel.topics import ensure_topics
from tests.conftest import settings_for
from tests.kafka_helpers import FaustWorker


@pytest.fixture(scope="module")
def analysis_worker(
    kafka: LocalKafka, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, FaustWorker]]:
    """One inference worker for a module's tests (each uses its own request ids)."""
    tmp = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    settings = settings_for(kafka, tmp)
    ensure_topics(settings)
    inference = FaustWorker(settings, tmp / "inference.log", app="faust_app:inference")
    try:
        inference.start(ready_timeout_s=90)
        yield settings, inference
    finally:
        inference.stop()
