"""``make demo``: the whole local stack in one terminal; Ctrl-C stops all of it.

Starts the Kafka broker, creates the topics, then runs each role as its own
process: the Faust stream and analytics workers, the system collector, and a tail of
the windowed aggregates and the alerts. Prints what runs where. A role that exits is
started again, as a process supervisor would (kill a worker and watch it come back:
it restores its state and resumes exactly); one that exits five times within a minute
takes the demo down with its log's tail. Ctrl-C (or SIGTERM) stops every child, and
children also get SIGTERM from the kernel if this supervisor itself is killed, so
nothing is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from kestrel.broker import running_broker
from kestrel.process import die_with_parent, stop_on_signals
from kestrel.settings import Settings, child_environment, get_settings
from kestrel.topics import ensure_topics

log = logging.getLogger("kestrel.demo")
CRASH_LOOP = (5, 60.0)  # this many exits within this many seconds: give up


@dataclass
class Child:
    """One supervised role: its command, its process and where it logs."""

    role: str
    argv: list[str]
    log_path: Path | None  # None: its output goes to this terminal
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    exits: deque[float] = field(default_factory=lambda: deque(maxlen=CRASH_LOOP[0]))

    def start(self, env: dict[str, str]) -> None:
        out = self.log_path.open("ab") if self.log_path else None
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                # Own process group: the terminal's Ctrl-C reaches only the supervisor,
                # which then stops the roles in order.
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            if out:
                out.close()

    def stop(self, timeout_s: float = 15.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs; killing it", self.role, timeout_s)
            proc.kill()
            proc.wait()

    def tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def roles(settings: Settings, logs: Path) -> list[Child]:
    py = sys.executable
    return [
        Child(
            "stream worker",
            [py, "-m", "faust", "-A", "faust_app", "worker", "-l", "info"],
            logs / "stream-worker.log",
        ),
        Child(
            "analytics worker",
            [py, "-m", "faust", "-A", "faust_app:analytics", "worker", "-l", "info"],
            logs / "analytics-worker.log",
        ),
        Child(
            "inference worker",
            [py, "-m", "faust", "-A", "faust_app:inference", "worker", "-l", "info"],
            logs / "inference-worker.log",
        ),
        Child(
            "synthetic cameras",
            [py, "-m", "kestrel.camera.cli", "--synthetic", "2", "--fps", "5"],
            logs / "cameras.log",
        ),
        Child(
            "dashboard",
            [py, "-m", "web"],
            logs / "web.log",
        ),
        Child(
            "system collector",
            [py, "-m", "kestrel.collectors.cli", "system"],
            logs / "collector-system.log",
        ),
        Child(
            "aggregates tail",
            [py, "-m", "kestrel.tail", "metrics.aggregates", "alerts", "camera.results"],
            None,
        ),
    ]


def run(settings: Settings) -> int:
    stop = stop_on_signals()
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with running_broker(settings) as broker:
        ensure_topics(settings)
        env = child_environment(settings, PYTHONUNBUFFERED="1")
        children = roles(settings, logs)
        for child in children:
            child.start(env)
        print(f"\nKestrel demo (namespace {settings.namespace!r})")
        broker_pid = broker.proc.pid if broker.proc else "?"
        kafka = f"Kafka {settings.kafka_version}"
        print(
            f"  {kafka:22} pid {broker_pid:<8} {settings.bootstrap_servers}  "
            f"log {broker.cfg.log_path}"
        )
        for child in children:
            pid = child.proc.pid if child.proc else "?"
            where = f"log {child.log_path}" if child.log_path else "this terminal"
            print(f"  {child.role:22} pid {pid:<8} {where}")
        print(f"Open the dashboard: http://{settings.web_host}:{settings.web_port}/")
        print(
            "Aggregates follow as their windows close, alerts as they start and end, and\n"
            "each camera frame's result.\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        failed: Child | None = None
        while failed is None and not stop.wait(0.5):
            for child in children:
                if child.proc is None or child.proc.poll() is None:
                    continue
                now = time.monotonic()
                child.exits.append(now)
                if len(child.exits) == CRASH_LOOP[0] and now - child.exits[0] < CRASH_LOOP[1]:
                    failed = child
                    break
                code = child.proc.returncode
                where = f"; its log: {child.log_path}" if child.log_path else ""
                print(f"{child.role} exited with {code}; starting it again{where}", flush=True)
                child.start(env)
        print("\nstopping ...", flush=True)
        for child in reversed(children):
            child.stop()
    if failed is not None:
        code = failed.proc.returncode if failed.proc else "?"
        print(f"{failed.role} exited with {code}; its log ends:\n{failed.tail()}", file=sys.stderr)
        return 1
    print("stopped: broker, workers and collectors are down")
    return 0


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        return run(get_settings())
    return 130


if __name__ == "__main__":
    sys.exit(main())
