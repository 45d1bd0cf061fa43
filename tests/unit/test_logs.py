"""A broker outage is logged when it starts and when it ends, with a count between."""

from __future__ import annotations

import logging
import threading

import pytest

from kestrel.logs import OutageFilter

pytestmark = pytest.mark.timeout(10)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.summary = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")
        if "trouble over" in record.getMessage():
            self.summary.set()


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_a_storm_of_connection_errors_is_one_line_and_a_summary_with_the_count() -> None:
    handler = Collect()
    handler.addFilter(OutageFilter(quiet_s=0.05))
    summary_log = logging.getLogger("kestrel.outage")
    summary_log.addHandler(handler)
    try:
        for _ in range(150):
            handler.handle(record("aiokafka.conn", logging.ERROR, "Connection refused to 1"))
            handler.handle(
                record("kestrel.librdkafka", logging.ERROR, "FAIL|Connect to ipv4#127.0.0.1 failed")
            )
        handler.handle(record("agents.telemetry", logging.WARNING, "dead letter from x[0]@3"))
        handler.handle(record("aiokafka.conn", logging.WARNING, "an unrelated oddity"))
        assert handler.summary.wait(5)
    finally:
        summary_log.removeHandler(handler)
    assert len(handler.lines) == 4, handler.lines
    assert handler.lines[0].startswith("aiokafka.conn: Connection refused")
    assert "counted" in handler.lines[0]
    assert handler.lines[1:3] == [
        "agents.telemetry: dead letter from x[0]@3",
        "aiokafka.conn: an unrelated oddity",
    ]
    assert "300 connection errors" in handler.lines[3]  # the first one included
