"""The dashboard server without its Kafka feed, for the tests of this folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.test_protocol import Server, without_kafka


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(without_kafka(tmp_path))
    running.start()
    yield running
    running.stop()
