"""``make faults``: the fault matrix, each case run N times, a table of passes.

Every case runs the whole pipeline as users run it (the project's broker; ``faust``
stream, analytics and inference workers; two live cameras at 5 FPS with known frames;
three model sources of collector samples with known values, an analytics rules file
that raises and clears alerts), puts its fault in the middle of the stream, waits
until every stage has processed and committed everything, and then compares every
output with what it must be (:mod:`bench.fault_checks`): the exact windows, one
record per camera frame and results equal to a replay of the tracker, the cameras'
count windows, the alerts an uninterrupted engine raises; dead letters exactly the
poison. Any loss not counted, any double count, any worker that dies is a failure.

Cases: ``kill-stream``, ``kill-inference``, ``kill-analytics`` (SIGKILL mid-stream,
then a restart); ``join`` (1 -> 2 stream workers), ``leave`` (2 -> 1, SIGTERM),
``join-leave`` (a worker joins and another leaves 2 s later); ``broker-restart``
(the broker stops and starts again mid-stream); ``poison`` (hostile messages on every
input topic).

    python -m bench.faults --runs 20            # every case
    python -m bench.faults --runs 3 kill-stream poison

It prints a table and writes ``bench/results/faults.json``; the integration suite runs
each case once (``tests/integration/test_faults.py``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from bench import fault_checks
from bench.telemetry import start_broker
from kestrel.analytics.config import load_rules
from kestrel.broker import LocalKafka
from kestrel.camera.frames import FrameHeaders
from kestrel.camera.registry import register
from kestrel.camera.synthetic import SyntheticScene
from kestrel.deadletter import DeadLetter
from kestrel.producer import KestrelProducer
from kestrel.schemas.camera import CameraConfig
from kestrel.settings import Settings, load_settings
from kestrel.topics import (
    ALERTS,
    ANALYTICS_TEMPORAL,
    CAMERA_DETECTIONS,
    CAMERA_FRAMES,
    CAMERA_RESULTS,
    CAMERAS,
    COLLECTOR_TOPICS,
    DEADLETTER,
    METRICS_AGGREGATES,
    METRICS_CAMERA,
    METRICS_MODEL,
    ensure_topics,
)
from tests.integration.telemetry_helpers import Row, envelope, expected_windows
from tests.kafka_helpers import READY_LINE, REPO, FaustWorker, read_all

RESULTS = REPO / "bench" / "results"
# Event time of the collector samples: recent (alerts and energy records carry it, and
# time retention would delete records from years ago), on a 5-minute boundary, and
# early enough that the closers 5 minutes on are not in the future.
BASE = (int(time.time() * 1000) - 15 * 60_000) // 300_000 * 300_000
GRACE_MS = 1_000
SOURCES = 3
ROWS = 1000  # per source: 50 s of event time at 20 Hz (regimes read 40 s)
PER_MESSAGE = 4
CAMERAS_N = 2
FPS = 5.0
CAMERA_SECONDS = 14.0
RULES = """\
rules:
  - name: tokens_bounded
    source: "model:*"
    check: tokens_per_second <= 800 always
  - name: ttft_recovers
    source: "model:*"
    check: ttft_ms > 380 is followed by ttft_ms < 60 within 1 s
jank: []
degradation:
  - source: "model:*"
    fields: {ttft_ms: higher}
patterns:
  length: 8
  watch:
    - source: "model:*"
      fields: [tokens_per_second]
regimes:
  window: 40
  every_s: 5
  confirm: 1
  settle_s: 5
  watch:
    - source: "model:*"
      fields: [tokens_per_second, ttft_ms]
"""


def rows_for(source: str, seed: int) -> list[Row]:
    """Integer values (exact sums); a spike every 2.5 s so that alerts start and end."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(ROWS):
        spike = i % 50 in (7, 8)
        rows.append(
            Row(
                source,
                BASE + i * 50,
                {
                    "tokens_per_second": 900.0 if spike else float(rng.integers(0, 700)),
                    "ttft_ms": None if i % 7 == 3 else float(rng.integers(20, 400)),
                },
            )
        )
    return rows


@dataclass
class CameraFeed:
    """Live cameras: pre-encoded synthetic frames, sent at FPS with fresh capture times."""

    settings: Settings
    sent: dict[str, str] = field(default_factory=dict)  # frame id -> camera id
    _thread: threading.Thread | None = None

    def start(self) -> None:
        producer = KestrelProducer(self.settings)
        for i in range(CAMERAS_N):
            config = CameraConfig.model_validate(
                {
                    "camera_id": f"fault-{i}",
                    "source": f"synthetic:{i}",
                    "fps": FPS,
                    "zones": [
                        {"name": "left", "polygon": [[0, 0], [320, 0], [320, 480], [0, 480]]}
                    ],
                    "lines": [{"name": "middle", "a": [320, 480], "b": [320, 0]}],
                }
            )
            register(producer, self.settings, config)
        assert producer.flush(30) == 0
        frames = [
            [
                bytes(cv2.imencode(".jpg", SyntheticScene(i).render(t / FPS)[0])[1])
                for t in range(40)
            ]
            for i in range(CAMERAS_N)
        ]
        self._thread = threading.Thread(target=self._run, args=(frames,), daemon=True)
        self._thread.start()

    def _run(self, frames: list[list[bytes]]) -> None:
        producer = Producer({"bootstrap.servers": self.settings.bootstrap_servers, "linger.ms": 1})
        topic = CAMERA_FRAMES.name(self.settings)
        started = time.monotonic()
        slot = 0
        while (now := time.monotonic()) - started < CAMERA_SECONDS:
            due = started + slot / (FPS * CAMERAS_N)
            if due > now:
                time.sleep(due - now)  # the cameras' frame clock, not a wait for a result
            camera, tick = slot % CAMERAS_N, slot // CAMERAS_N
            camera_id = f"fault-{camera}"
            headers = FrameHeaders.make(camera_id, time.time_ns(), tick, 640, 480)
            jpeg = frames[camera][tick % len(frames[camera])]
            producer.produce(topic, jpeg, camera_id.encode(), headers=headers.encode())  # type: ignore[arg-type]
            self.sent[headers.frame_id] = camera_id
            producer.poll(0)
            slot += 1
        assert producer.flush(60) == 0

    def wait(self) -> None:
        assert self._thread is not None
        self._thread.join(CAMERA_SECONDS + 90)


@dataclass
class Pipeline:
    """One fault run: its namespace, workers, inputs and the checks of its outputs."""

    broker: LocalKafka
    workdir: Path
    settings: Settings = field(init=False)
    streams: list[FaustWorker] = field(default_factory=list)
    inference: FaustWorker | None = None
    analytics: FaustWorker | None = None
    cameras: CameraFeed = field(init=False)
    rows: dict[str, list[Row]] = field(default_factory=dict)
    poison: list[tuple[str, int, int]] = field(default_factory=list)  # topic, partition, offset
    noisy_logs_allowed: int | None = None  # when set: most WARNING/ERROR lines a worker logs
    _stream_logs: int = 0

    def __post_init__(self) -> None:
        rules = self.workdir / "rules.yaml"
        rules.write_text(RULES)
        self.settings = load_settings(
            broker_url=f"kafka://{self.broker.cfg.bootstrap_servers}",
            namespace=f"f{uuid.uuid4().hex[:10]}",
            data_dir=self.workdir,
            topic_partitions=2,
            window_grace_s=GRACE_MS / 1000,
            flush_interval_s=0.2,
            commit_interval_s=1.0,
            session_timeout_s=6,
            rules_path=rules,
            max_queue_delay_ms=10.0,
        )
        ensure_topics(self.settings)
        self.cameras = CameraFeed(self.settings)
        self.rows = {f"model:fault{i}": rows_for(f"model:fault{i}", i) for i in range(SOURCES)}

    # --- Workers ------------------------------------------------------------------------
    def stream_worker(self) -> FaustWorker:
        self._stream_logs += 1
        return FaustWorker(self.settings, self.workdir / f"stream-{self._stream_logs}.log")

    def start(self, streams: int = 1) -> None:
        self.streams = [self.stream_worker() for _ in range(streams)]
        self.inference = FaustWorker(
            self.settings, self.workdir / "inference.log", app="faust_app:inference"
        )
        self.analytics = FaustWorker(
            self.settings, self.workdir / "analytics.log", app="faust_app:analytics"
        )
        launch_all([*self.streams, self.inference, self.analytics])

    def stop(self) -> None:
        for worker in [*self.streams, self.inference, self.analytics]:
            if worker is not None:
                worker.stop()

    def dead_workers(self) -> list[str]:
        workers = [*self.streams, self.inference, self.analytics]
        return [str(w.log_path.name) for w in workers if w is not None and not w.alive]

    # --- Inputs -------------------------------------------------------------------------
    def produce_third(self, third: int) -> None:
        """A third of every source's rows, interleaved in time as live collectors send."""
        lo, hi = third * ROWS // 3, (third + 1) * ROWS // 3
        batches = sorted(
            (rows[i].ts, source, envelope(rows[i : min(i + PER_MESSAGE, hi)]))
            for source, rows in self.rows.items()
            for i in range(lo, hi, PER_MESSAGE)
        )
        send(
            self.settings,
            METRICS_MODEL.name(self.settings),
            [(s.encode(), v) for _, s, v in batches],
        )
        if third == 2:  # closers: stream time past every window of the samples
            closers = [
                (source.encode(), envelope([Row(source, BASE + 301_000 + GRACE_MS, {"x": 0.0})]))
                for source in self.rows
            ]
            send(self.settings, METRICS_MODEL.name(self.settings), closers)

    def wait_progress(self, timeout_s: float = 90.0) -> None:
        """Mid-stream: some windows emitted and some camera results out, nothing done."""
        wait_for(
            lambda: (
                count(self.settings, METRICS_AGGREGATES.name(self.settings)) > 0
                and count(self.settings, CAMERA_RESULTS.name(self.settings)) >= 4
            ),
            timeout_s,
            "no progress before the fault",
            self,
        )

    # --- The end ------------------------------------------------------------------------
    def wait_quiet(self, timeout_s: float = 150.0) -> None:
        """Until every group has processed and committed every input record."""
        groups = {
            self.settings.app_id("stream"): [CAMERA_DETECTIONS, CAMERAS],
            self.settings.app_id("windows"): list(COLLECTOR_TOPICS),
            self.settings.app_id("analytics"): list(COLLECTOR_TOPICS),
            self.settings.app_id("inference"): [CAMERA_FRAMES],
        }
        self.cameras.wait()
        wait_for(
            lambda: all(caught_up(self.settings, g, s) for g, s in groups.items()),
            timeout_s,
            "the groups never caught up",
            self,
        )

    def verify(self) -> list[str]:
        settings = self.settings
        problems: list[str] = []
        aggregates = read_all(settings, METRICS_AGGREGATES.name(settings))
        expected = expected_windows(row for rows in self.rows.values() for row in rows)
        problems += fault_checks.check_windows(aggregates, expected)
        letters = read_all(settings, DEADLETTER.name(settings))
        dead_frames, found = set(), []
        for message in letters:
            raw = cast(list[tuple[str, Any]], message.headers() or [])
            pairs = {name: value for name, value in raw if isinstance(value, bytes)}
            letter = DeadLetter.from_headers(pairs)
            found.append((letter.topic, letter.partition, letter.offset))
            if "kestrel.frame_id" in pairs:
                dead_frames.add(pairs["kestrel.frame_id"].decode())
        if sorted(found) != sorted(self.poison):
            problems.append(f"dead letters {sorted(found)[:6]} != poison {sorted(self.poison)[:6]}")
        results = read_all(settings, CAMERA_RESULTS.name(settings))
        detections = read_all(settings, CAMERA_DETECTIONS.name(settings))
        lines = {f"fault-{i}": [((320.0, 480.0), (320.0, 0.0), "middle")] for i in range(CAMERAS_N)}
        dead_frames &= set(self.cameras.sent)
        problems += fault_checks.check_frames(
            self.cameras.sent, results, detections, dead_frames, lines
        )
        problems += fault_checks.check_camera_windows(aggregates, results)
        inputs = [m for spec in COLLECTOR_TOPICS for m in read_all(settings, spec.name(settings))]
        inputs = [m for m in inputs if m.topic() != METRICS_CAMERA.name(settings)]
        analyses: list[tuple[str, int, dict[str, Any]]] = []
        want = fault_checks.expected_alerts(
            load_rules(settings.rules_path),
            inputs,
            settings.source_max_hz,
            round(settings.max_future_s * 1000),
            settings.namespace,
            analyses,
        )
        problems += fault_checks.check_alerts(read_all(settings, ALERTS.name(settings)), want)
        temporal = read_all(settings, ANALYTICS_TEMPORAL.name(settings))
        problems += fault_checks.check_temporal(temporal, analyses)
        dead = self.dead_workers()
        if dead:
            problems.append(f"workers died: {dead}")
        if self.noisy_logs_allowed is not None:
            for worker in [*self.streams, self.inference, self.analytics]:
                assert worker is not None
                text = worker.log_path.read_text(errors="replace")
                noisy = [
                    line
                    for line in text.splitlines()
                    if "] [ERROR] " in line or "] [WARNING] " in line
                ]
                if len(noisy) > self.noisy_logs_allowed:
                    problems.append(
                        f"{worker.log_path.name}: {len(noisy)} warnings and errors: {noisy[:3]}"
                    )
        return problems


# --- Cases ------------------------------------------------------------------------------
def begin(p: Pipeline, streams: int = 1) -> None:
    """Workers up, cameras live, the first third of the samples in, progress seen."""
    p.start(streams=streams)
    p.cameras.start()
    p.produce_third(0)
    p.wait_progress()


def case_kill(role: str) -> Callable[[Pipeline], None]:
    def run(p: Pipeline) -> None:
        begin(p)
        worker = {"stream": p.streams[0], "inference": p.inference, "analytics": p.analytics}[role]
        assert worker is not None
        worker.kill()  # SIGKILL: no commit, no goodbye
        p.produce_third(1)
        worker.start(ready_timeout_s=90)
        p.produce_third(2)

    return run


def case_join(p: Pipeline) -> None:
    begin(p)
    joining = p.stream_worker()
    joining.start(ready_timeout_s=90)
    p.streams.append(joining)
    p.produce_third(1)
    p.produce_third(2)


def case_leave(p: Pipeline) -> None:
    begin(p, streams=2)
    p.streams[0].stop()  # SIGTERM: a clean leave
    p.streams = p.streams[1:]
    p.produce_third(1)
    p.produce_third(2)


def case_join_leave(p: Pipeline) -> None:
    begin(p)
    joining = p.stream_worker()
    joining.launch()
    first = p.streams[0]
    p.streams = [joining]
    p.produce_third(1)
    joining.wait_for_log(READY_LINE, 90)
    time.sleep(2)  # the fault itself: the first worker leaves 2 s after the second joined
    first.stop()
    p.produce_third(2)


def case_broker_restart(p: Pipeline) -> None:
    begin(p)
    p.broker.stop()
    time.sleep(5)  # the fault itself: the broker is away for 5 s
    p.broker.start(ready_timeout_s=90)
    p.produce_third(1)
    p.produce_third(2)
    p.noisy_logs_allowed = MAX_OUTAGE_LOG_LINES


#: WARNING and ERROR lines a worker may log over the whole broker-restart case: the
#: outage's start and end, a few lines of the rebalance after it; not one per retry.
MAX_OUTAGE_LOG_LINES = 12


def case_poison(p: Pipeline) -> None:
    begin(p)
    p.poison = inject_poison(p.settings)
    p.produce_third(1)
    p.produce_third(2)


CASES: dict[str, Callable[[Pipeline], None]] = {
    "kill-stream": case_kill("stream"),
    "kill-inference": case_kill("inference"),
    "kill-analytics": case_kill("analytics"),
    "join": case_join,
    "leave": case_leave,
    "join-leave": case_join_leave,
    "broker-restart": case_broker_restart,
    "poison": case_poison,
}
OWN_BROKER = {"broker-restart"}  # cases that must not touch a shared broker


def inject_poison(settings: Settings) -> list[tuple[str, int, int]]:
    """Hostile messages on every input topic; returns where each landed."""
    source = "model:fault0"
    far = 32_503_680_000_000  # the year 3000
    head = b'{"timestamp": 1700000100000, "source": "model:fault0", "type": "metrics", '
    collector = [
        b"{not json",
        head + b'"data": {"x": Infinity}}',
        head + b'"data": {"x": NaN}}',
        head + b'"data": {"x": 1e400}}',
        orjson.dumps({"timestamp": far, "source": source, "type": "metrics", "data": {"x": 1.0}}),
        orjson.dumps({"timestamp": BASE, "source": source, "type": "metrics", "data": {}}),
        orjson.dumps(
            {
                "timestamp": BASE,
                "source": source,
                "type": "metrics",
                "data": {f"f{i}": 1.0 for i in range(300)},
            }
        ),
        orjson.dumps({"timestamp": -5, "source": source, "type": "metrics", "data": {"x": 1.0}}),
        orjson.dumps({"timestamp": BASE, "source": "ui", "type": "metrics", "data": {"x": 1.0}}),
        b"\x00" * 64,
        b"[" * 5000 + b"]" * 5000,
    ]
    sends: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    for raw in collector:
        sends.append((METRICS_MODEL.name(settings), raw, source.encode(), []))
    for spec in COLLECTOR_TOPICS:
        if spec is not METRICS_MODEL:
            sends.append((spec.name(settings), b'{"timestamp": 1, "data": 7}', b"x", []))
    sends.append((CAMERAS.name(settings), b'{"camera_id": "bad", "source": "x"}', b"bad", []))
    sends.append((CAMERAS.name(settings), b"not a config", b"bad id with spaces", []))
    good_headers = FrameHeaders.make("fault-0", time.time_ns(), 10_000, 640, 480).encode()
    frames = CAMERA_FRAMES.name(settings)
    sends.append((frames, b"\xff\xd8 not a jpeg", b"fault-0", good_headers))
    sends.append((frames, b"\xff\xd8", b"nobody", good_headers))
    sends.append((frames, b"\xff\xd8", b"fault-0", []))
    detections = CAMERA_DETECTIONS.name(settings)
    sends.append((detections, b"{broken", b"fault-1", []))
    sends.append(
        (
            detections,
            b'{"camera_id": "fault-1", "frame_id": "x", "seq": 1, "capture_ts_ns": 1, "width": 1,'
            b' "height": 1, "detections": [{"label": "p", "score": NaN, "box": [0, 0, 1, 1]}],'
            b' "model": "m", "provider": "p", "batch_size": 1, "queue_ms": 0, "decode_ms": 0,'
            b' "inference_ms": 0, "broker_in_ms": 0}',
            b"fault-1",
            [],
        )
    )
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    placed: list[tuple[str, int, int]] = []

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        placed.append((msg.topic(), msg.partition(), msg.offset()))

    for topic, value, key, headers in sends:
        producer.produce(topic, value, key, headers=headers, on_delivery=delivered)  # type: ignore[arg-type]
    assert producer.flush(30) == 0
    return placed


# --- Plumbing ---------------------------------------------------------------------------
def launch_all(workers: list[FaustWorker], timeout_s: float = 120.0) -> None:
    for worker in workers:
        worker.launch()
    with ThreadPoolExecutor(len(workers)) as pool:
        for future in [pool.submit(w.wait_for_log, READY_LINE, timeout_s) for w in workers]:
            future.result()


def send(settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5})
    for key, value in messages:
        producer.produce(topic, value, key)
        producer.poll(0)
    assert producer.flush(60) == 0


def count(settings: Settings, topic: str) -> int:
    """Records in ``topic`` now, control records included: a cheap sign of progress."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "progress"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.partitions
        )
    finally:
        consumer.close()


COORDINATOR_MOVING = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
}


def caught_up(settings: Settings, group: str, specs: list[Any]) -> bool:
    """Has ``group`` committed past the last record of every partition of ``specs``?

    Past the last *record*: a transaction's commit marker after it takes an offset that
    no consumer is handed, so a group never commits up to the high watermark itself.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        for spec in specs:
            topic = spec.name(settings)
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            tps = [TopicPartition(topic, p) for p in partitions]
            try:
                committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
            except KafkaException as exc:
                # After a broker restart a group's coordinator takes a while to load
                # (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS): not caught up yet.
                if exc.args and exc.args[0].code() in COORDINATOR_MOVING:
                    return False
                raise
            for p in partitions:
                last = last_record(consumer, topic, p)
                if last is not None and committed.get(p, -1) <= last:
                    return False
        return True
    finally:
        consumer.close()


def last_record(consumer: Consumer, topic: str, p: int) -> int | None:
    """The offset of the last committed record of ``topic[p]``, None if it has none."""
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
    if high == low:
        return None
    for back in (4, 64, 4096, high - low):
        start = max(low, high - back)
        consumer.assign([TopicPartition(topic, p, start)])
        last = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msgs = consumer.consume(500, timeout=0.2)
            for msg in msgs:
                if msg.error() is None:
                    last = msg.offset()
            position = consumer.position([TopicPartition(topic, p)])[0].offset
            if position >= high:
                break
        if last is not None:
            return last
    return None


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, p: Pipeline) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        dead = p.dead_workers()
        if dead:
            raise AssertionError(f"{what}: workers died: {dead}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:g} s")
        time.sleep(0.5)  # polling the broker for a condition


@dataclass
class Outcome:
    case: str
    ok: bool
    seconds: float
    problems: list[str]
    workdir: str


def run_case(name: str, broker: LocalKafka | None, workdir: Path) -> Outcome:
    """One run of one case; ``broker`` None (or an OWN_BROKER case): start one here."""
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    own = broker is None or name in OWN_BROKER
    if own:
        broker = start_broker(workdir, load_settings())
    assert broker is not None
    pipeline = Pipeline(broker, workdir)
    try:
        CASES[name](pipeline)
        faulted = time.monotonic()
        pipeline.wait_quiet()
        quiet = time.monotonic()
        problems = pipeline.verify()
        print(
            f"    {name}: start and fault {faulted - started:.0f} s, until quiet "
            f"{quiet - faulted:.0f} s, checks {time.monotonic() - quiet:.0f} s",
            flush=True,
        )
    except Exception as exc:
        problems = [f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=3)]
    finally:
        pipeline.stop()
        if own:
            broker.stop()
    return Outcome(name, not problems, time.monotonic() - started, problems, str(workdir))


def write_report(
    outcomes: list[Outcome], cases: list[str], runs: int, output: Path, logs: Path
) -> list[str]:
    """Write the JSON for the runs so far; return the table's lines."""
    lines = [f"{'case':15} {'passed':>8}"]
    table = {}
    for name in cases:
        mine = [o for o in outcomes if o.case == name]
        passed = sum(o.ok for o in mine)
        table[name] = {"runs": len(mine), "passed": passed}
        lines.append(f"{name:15} {passed:>3} / {len(mine):<3}")
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": f"{platform.machine()}, {platform.system()}",
        "runs_per_case": runs,
        "complete": len(outcomes) == runs * len(cases),
        "table": table,
        "failures": [o.__dict__ for o in outcomes if not o.ok],
        "logs": str(logs),
    }
    output.write_text(json.dumps(report, indent=2) + "\n")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", choices=[*CASES, []], default=[])
    parser.add_argument("--runs", type=int, default=20, help="runs per case")
    parser.add_argument("--output", type=Path, default=RESULTS / "faults.json")
    args = parser.parse_args()
    cases = args.cases or list(CASES)
    root = Path(tempfile.mkdtemp(prefix="kestrel-faults-"))
    shared = start_broker(root / "broker", load_settings())
    outcomes: list[Outcome] = []
    try:
        for run in range(args.runs):
            for name in cases:
                outcome = run_case(name, shared, root / f"{name}-{run}")
                outcomes.append(outcome)
                mark = "pass" if outcome.ok else "FAIL"
                print(f"{name:15} run {run + 1:2}: {mark} in {outcome.seconds:.0f} s", flush=True)
                for problem in outcome.problems[:5]:
                    print(f"    {problem}", flush=True)
                # Written after every run: an interrupted matrix still leaves its record.
                write_report(outcomes, cases, args.runs, args.output, root)
    finally:
        shared.stop()
    print()
    for line in write_report(outcomes, cases, args.runs, args.output, root):
        print(line)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
