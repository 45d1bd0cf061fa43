"""Helpers for integration tests: a Faust worker as a child process, and topic reads."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from kestrel.settings import Settings, child_environment

REPO = Path(__file__).resolve().parent.parent
READY_LINE = "[^Worker]: Ready"


class FaustWorker:
    """``faust -A faust_app worker``, run exactly as a user runs it, logging to a file."""

    def __init__(self, settings: Settings, log_path: Path, app: str = "faust_app") -> None:
        self.settings = settings
        self.log_path = log_path
        self.app = app
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self, ready_timeout_s: float = 60.0) -> None:
        self.launch()
        self.wait_for_log(READY_LINE, ready_timeout_s)

    def launch(self) -> None:
        """Start the process; :meth:`wait_for_log` on ``READY_LINE`` to know it is up."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "faust", "-A", self.app, "worker", "-l", "info"],
                cwd=REPO,
                env=child_environment(self.settings, PYTHONUNBUFFERED="1"),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_since_start(self) -> str:
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def wait_for_log(self, needle: str, timeout_s: float) -> None:
        """Return once ``needle`` appears in this run's log; fail if the worker dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.log_since_start():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.proc.returncode} before {needle!r}:\n"
                    + self.log_since_start()[-4000:]
                )
            time.sleep(0.1)  # polling a log file for a condition
        raise AssertionError(
            f"no {needle!r} within {timeout_s}s:\n" + self.log_since_start()[-4000:]
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, as when a machine dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def read_until(
    settings: Settings,
    topic: str,
    done: Callable[[list[Message]], bool],
    timeout_s: float,
    **config: Any,
) -> list[Message]:
    """Read ``topic`` from the beginning until ``done(messages)``; fail at the deadline."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # Kestrel's stages write in transactions: read what they committed, as a
            # downstream consumer should (aborted records would look like duplicates).
            "isolation.level": "read_committed",
            **config,
        }
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(messages):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{topic}: condition not met within {timeout_s}s; read {len(messages)} messages"
                )
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue  # not created yet: librdkafka keeps the subscription
                raise AssertionError(f"{topic}: {error}")
            messages.append(msg)
    finally:
        consumer.close()
    return messages


def read_all(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[Message]:
    """Every committed record of ``topic``, from the start to its end offsets now."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends, empty = {}, set()
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = high
            if low == high:
                empty.add(p)
        partitions = {p: m for p, m in partitions.items() if p not in empty}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while True:
            # By position: a transaction's commit marker takes an offset no record has.
            positions = consumer.position([TopicPartition(topic, p) for p in partitions])
            if all(tp.offset >= ends[tp.partition] for tp in positions):
                return messages
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: not read to its end within {timeout_s}s")
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error() is None:
                    messages.append(msg)
    finally:
        consumer.close()


def run_benchmark(module: str, args: list[str], output: Path, timeout_s: float) -> Any:
    """``python -m <module> <args> --output <output>`` as ``make bench-*`` runs it; its JSON.

    Checks every key: each has a value, and the small run writes the same keys as the
    full run the README quotes (``bench/results/<output's name>``), so a figure or a
    baseline that stops being measured fails the suite.
    """
    subprocess.run(
        [sys.executable, "-m", module, *args, "--output", str(output)],
        cwd=REPO,
        check=True,
        timeout=timeout_s,
    )
    result = json.loads(output.read_text())
    assert [k for k, v in result.items() if v is None] == [], f"{module}: keys without a value"
    published = json.loads((REPO / "bench" / "results" / output.name).read_text())
    assert sorted(result) == sorted(published), f"{module}: keys differ from the README's run"
    return result
