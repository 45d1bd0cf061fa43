"""The local Apache Kafka broker: jars from Maven Central, one KRaft node on 127.0.0.1.

``make demo``, the tests and the benchmarks all run this same broker:

* :func:`fetch_jars` resolves ``org.apache.kafka:kafka_2.13`` and a log4j2 SLF4J
  binding with ``mvn dependency:copy-dependencies`` once into the cache directory,
  printing Maven's download lines as progress;
* :class:`LocalKafka` writes a combined broker + controller config, formats the
  storage (``StorageTool format --standalone``), starts ``kafka.Kafka`` with a bounded
  heap, and waits until a real client bootstrap succeeds; it stops the JVM cleanly and
  puts the log's tail in the error when the broker fails to start.

CLI: ``kestrel-broker fetch|run|start|stop|status`` (``python -m kestrel.broker``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from kestrel.errors import BrokerError, BrokerNotReady
from kestrel.process import die_with_parent, stop_on_signals
from kestrel.settings import Settings, get_settings

log = logging.getLogger(__name__)

LOG4J_VERSION = "2.24.3"
SLF4J_VERSION = "2.0.17"

POM_TEMPLATE = """\
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.kestrel</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <!-- kafka_2.13 declares slf4j-api 1.7; the log4j2 binding below needs 2.x. -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = warn
"""


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how one local broker runs."""

    version: str
    port: int
    controller_port: int
    data_dir: Path
    cache_dir: Path
    heap_mb: int = 512
    host: str = "127.0.0.1"

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerConfig:
        return cls(
            version=settings.kafka_version,
            port=settings.kafka_port,
            controller_port=settings.kafka_controller_port,
            data_dir=settings.data_dir / "kafka",
            cache_dir=settings.cache_dir,
            heap_mb=settings.kafka_heap_mb,
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "broker.pid"


def render_server_properties(cfg: BrokerConfig) -> str:
    """The single-node KRaft config: combined broker and controller on loopback."""
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "listeners": f"PLAINTEXT://{cfg.host}:{cfg.port},CONTROLLER://{cfg.host}:{cfg.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{cfg.host}:{cfg.port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.quorum.bootstrap.servers": f"{cfg.host}:{cfg.controller_port}",
        "log.dirs": str((cfg.data_dir / "logs").resolve()),
        # One node: every internal topic has one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # A lone consumer should not wait 3 s for company before it is assigned.
        "group.initial.rebalance.delay.ms": "0",
        "num.partitions": "1",
        "auto.create.topics.enable": "true",
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


# --- Jars --------------------------------------------------------------------------------


def jars_dir(cache_dir: Path, version: str) -> Path:
    """The classpath folder of one Kafka version inside the cache."""
    return cache_dir / f"kafka-{version}" / "libs"


def fetch_jars(cache_dir: Path, version: str, out: IO[str] = sys.stderr) -> Path:
    """Resolve the broker's jars from Maven Central once; return their folder."""
    libs = jars_dir(cache_dir, version)
    done = libs.parent / "COMPLETE"
    if done.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("mvn not found on PATH: install Maven (Debian: apt-get install maven)")
    libs.parent.mkdir(parents=True, exist_ok=True)
    pom = libs.parent / "pom.xml"
    pom.write_text(POM_TEMPLATE.format(version=version, slf4j=SLF4J_VERSION, log4j=LOG4J_VERSION))
    staging = libs.parent / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging.resolve()}",
        "-DincludeScope=runtime",
    ]
    print(f"kestrel-broker: fetching Apache Kafka {version} jars from Maven Central", file=out)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    transcript: list[str] = []
    for line in proc.stdout:
        transcript.append(line)
        if ("Downloaded from" in line and ".jar " in line) or "ERROR" in line:
            print("  " + line.strip().removeprefix("[INFO] "), file=out, flush=True)
    if proc.wait() != 0:
        tail = "".join(transcript[-25:])
        raise BrokerError(f"could not fetch the Kafka jars ({' '.join(cmd)}):\n{tail}")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    done.write_text(f"{version}\n")
    print(f"kestrel-broker: {len(list(libs.glob('*.jar')))} jars in {libs}", file=out)
    return libs


# --- The broker process ------------------------------------------------------------------


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) != 0


def probe_bootstrap(bootstrap_servers: str, timeout_s: float = 2.0) -> int:
    """Do a real client bootstrap (metadata request); return the broker count."""
    from confluent_kafka.admin import AdminClient  # heavy import, only when used

    quiet = logging.getLogger("kestrel.broker.probe")
    quiet.setLevel(logging.CRITICAL)
    admin = AdminClient(
        {"bootstrap.servers": bootstrap_servers, "socket.connection.setup.timeout.ms": 1000},
        logger=quiet,
    )
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception as exc:  # KafkaException: transport or timeout
        raise BrokerNotReady(f"no bootstrap from {bootstrap_servers}: {exc}") from exc
    return len(metadata.brokers)


class LocalKafka:
    """One single-node KRaft broker process, started and stopped by this object."""

    def __init__(self, cfg: BrokerConfig, *, tie_to_parent: bool = True) -> None:
        self.cfg = cfg
        self.tie_to_parent = tie_to_parent
        self.proc: subprocess.Popen[bytes] | None = None

    # Files ------------------------------------------------------------------------------
    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise BrokerError(
                "java not found on PATH: install a JDK 17+ (apt-get install default-jdk)"
            )
        return java

    def _classpath(self) -> str:
        libs = jars_dir(self.cfg.cache_dir, self.cfg.version)
        if not (libs.parent / "COMPLETE").exists():
            raise BrokerError(
                f"no Kafka {self.cfg.version} jars in {libs}: run `kestrel-broker fetch`"
            )
        return str(libs.resolve() / "*")

    def _write_config(self) -> Path:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        (self.cfg.data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        props = self.cfg.data_dir / "server.properties"
        props.write_text(render_server_properties(self.cfg))
        return props

    def format_storage(self) -> None:
        """Format the log directory once; a formatted one keeps its cluster id."""
        props = self._write_config()
        if (self.cfg.data_dir / "logs" / "meta.properties").exists():
            return
        cluster_id = _kafka_cluster_id()
        cmd = [
            self._java(),
            "-cp",
            self._classpath(),
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            # One argument: a third of the ids begin with "-" (base64url), which
            # the tool's parser would take for an option after a separate "-t".
            f"--cluster-id={cluster_id}",
            "-c",
            str(props),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BrokerError(
                f"formatting {self.cfg.data_dir} failed:\n{result.stdout}{result.stderr}"
            )

    # Lifecycle --------------------------------------------------------------------------
    def start(self, ready_timeout_s: float = 60.0) -> None:
        """Start the broker and return once a client bootstrap succeeds."""
        for port in (self.cfg.port, self.cfg.controller_port):
            if not port_is_free(self.cfg.host, port):
                raise BrokerError(
                    f"port {port} on {self.cfg.host} is in use: is another broker running? "
                    "Stop it (`kestrel-broker stop`) or set KESTREL_KAFKA_PORT / "
                    "KESTREL_KAFKA_CONTROLLER_PORT"
                )
        self.format_storage()
        cmd = [
            self._java(),
            f"-Xmx{self.cfg.heap_mb}m",
            f"-Xms{min(self.cfg.heap_mb, 256)}m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={(self.cfg.data_dir / 'log4j2.properties').resolve()}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str((self.cfg.data_dir / "server.properties").resolve()),
        ]
        with self.cfg.log_path.open("ab") as logfile:
            self.proc = subprocess.Popen(
                cmd,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent if self.tie_to_parent else None,
                # Its own process group: a terminal's Ctrl-C goes to the supervisor,
                # which stops the workers before the broker they talk to.
                start_new_session=True,
            )
        self.cfg.pid_path.write_text(f"{self.proc.pid}\n")
        try:
            self.wait_ready(ready_timeout_s)
        except BrokerError:
            self.stop()
            raise

    def wait_ready(self, timeout_s: float) -> None:
        """Retry a real bootstrap until it succeeds, the JVM exits, or time runs out."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerError(
                    f"Kafka exited with {self.proc.returncode} while starting; "
                    f"log tail ({self.cfg.log_path}):\n{self.log_tail()}"
                )
            try:
                probe_bootstrap(self.cfg.bootstrap_servers, timeout_s=1.0)
                return
            except BrokerNotReady as exc:
                last = exc
                time.sleep(0.2)  # poll interval of a readiness loop, not a wait for an event
        raise BrokerError(
            f"Kafka did not accept a client within {timeout_s:.0f}s ({last}); "
            f"log tail ({self.cfg.log_path}):\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, wait for a clean shutdown, SIGKILL if it does not come."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("Kafka did not stop within %.0fs; killing it", timeout_s)
                proc.kill()
                proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.cfg.pid_path.unlink()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.cfg.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no broker log yet)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _kafka_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _read_pid(cfg: BrokerConfig) -> int | None:
    try:
        pid = int(cfg.pid_path.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


@contextlib.contextmanager
def running_broker(settings: Settings) -> Iterator[LocalKafka]:
    """Fetch if needed, start, yield, stop: the broker for one supervised run."""
    cfg = BrokerConfig.from_settings(settings)
    fetch_jars(cfg.cache_dir, cfg.version)
    broker = LocalKafka(cfg)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    """``kestrel-broker``: fetch, run (foreground), start/stop (background), status."""
    parser = argparse.ArgumentParser(prog="kestrel-broker", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fetch", "run", "start", "stop", "status"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = get_settings()
    cfg = BrokerConfig.from_settings(settings)
    try:
        if args.command == "fetch":
            fetch_jars(cfg.cache_dir, cfg.version)
        elif args.command == "run":
            stop = stop_on_signals()
            with running_broker(settings) as broker:
                print(f"Kafka {cfg.version} ready on {cfg.bootstrap_servers}; Ctrl-C stops it")
                while not stop.wait(0.5) and broker.proc is not None:
                    if broker.proc.poll() is not None:
                        print(f"Kafka exited; log tail:\n{broker.log_tail()}", file=sys.stderr)
                        return 1
        elif args.command == "start":
            fetch_jars(cfg.cache_dir, cfg.version)
            LocalKafka(cfg, tie_to_parent=False).start()
            print(f"Kafka {cfg.version} ready on {cfg.bootstrap_servers} (log: {cfg.log_path})")
        elif args.command == "stop":
            pid = _read_pid(cfg)
            if pid is None:
                print("no broker running from", cfg.data_dir)
                return 0
            os.kill(pid, signal.SIGTERM)
            for _ in range(200):
                if _read_pid(cfg) is None:
                    break
                time.sleep(0.1)
            print("stopped broker", pid)
        else:
            pid = _read_pid(cfg)
            print(f"running, pid {pid}" if pid else "not running")
            return 0 if pid else 1
    except BrokerError as exc:
        print(f"kestrel-broker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
