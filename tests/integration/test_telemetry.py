"""The telemetry stage end to end, on the project's own broker.

Collector messages -> ``faust -A faust_app worker`` (run as a user runs it) ->
1 s / 10 s / 5 min windows -> ``metrics.aggregates``, read back by a plain
confluent-kafka consumer and compared with values computed here from the inputs.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from kestrel.broker import LocalKafka
from kestrel.collectors.model import ModelMetrics
from kestrel.deadletter import DeadLetter
from kestrel.settings import Settings, child_environment
from kestrel.topics import (
    ALERTS,
    ANALYSIS_CANCEL,
    ANALYSIS_EVENTS,
    ANALYSIS_REQUESTS,
    ANALYTICS_TEMPORAL,
    CAMERA_FRAMES,
    CATALOGUE,
    DEADLETTER,
    METRICS_AGGREGATES,
    METRICS_ENERGY,
    METRICS_LATE,
    METRICS_MODEL,
    STATE_ANALYTICS,
    ensure_topics,
)
from tests.conftest import settings_for
from tests.integration.telemetry_helpers import (
    Row,
    assert_windows_match,
    envelope,
    expected_windows,
    produce,
    read_aggregates,
)
from tests.kafka_helpers import FaustWorker, read_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# Event time is the envelope's; any instant works. This one starts a 5-minute window.
BASE = 1_700_000_100_000
GRACE_MS = 1_000


@pytest.fixture
def telemetry(kafka: LocalKafka, tmp_path: Path) -> Iterator[tuple[Settings, FaustWorker]]:
    """A stream worker in a fresh namespace (stream time is per partition)."""
    settings = settings_for(kafka, tmp_path, window_grace_s=GRACE_MS / 1000, flush_interval_s=0.1)
    worker = FaustWorker(settings, tmp_path / "worker.log")
    worker.start()
    try:
        yield settings, worker
    finally:
        worker.stop()


def source() -> str:
    return f"model:t{uuid.uuid4().hex[:8]}"


def rows_for(src: str, start_ms: int, count: int, step_ms: int, seed: int) -> list[Row]:
    """Integer values (exact float sums), some nulls, at a fixed rate."""
    rng = np.random.default_rng(seed)
    return [
        Row(
            src,
            start_ms + i * step_ms,
            {
                "tokens_per_second": float(rng.integers(0, 1000)),
                "ttft_ms": None if i % 7 == 3 else float(rng.integers(20, 400)),
            },
        )
        for i in range(count)
    ]


def messages(rows: list[Row], per_message: int) -> list[tuple[bytes, bytes]]:
    return [
        (rows[0].source.encode(), envelope(rows[i : i + per_message]))
        for i in range(0, len(rows), per_message)
    ]


def interleaved(streams: list[list[Row]], per_message: int) -> list[tuple[bytes, bytes]]:
    """Messages of several sources in time order, as concurrent collectors send them.

    Stream time is per partition: had one source's whole stream gone first, another
    source on the same partition would rightly be late.
    """
    batches = [
        (rows[i].ts, rows[0].source.encode(), envelope(rows[i : i + per_message]))
        for rows in streams
        for i in range(0, len(rows), per_message)
    ]
    return [(key, value) for _, key, value in sorted(batches, key=lambda b: b[0])]


def closer(src: str, at_ms: int) -> tuple[bytes, bytes]:
    """A message whose timestamp moves the partition's stream time to ``at_ms``."""
    return src.encode(), envelope([Row(src, at_ms, {"tokens_per_second": 0.0})])


def test_windows_of_1s_10s_and_5m_are_exact_across_boundaries(
    telemetry: tuple[Settings, FaustWorker],
) -> None:
    settings, _ = telemetry
    src = source()
    # 12 s at 20 Hz from 9.0 s: crosses the 10 s and 20 s boundaries, 4 rows a message.
    rows = rows_for(src, BASE + 9_000, 240, 50, seed=1)
    produce(settings, METRICS_MODEL.name(settings), messages(rows, 4))
    produce(settings, METRICS_MODEL.name(settings), [closer(src, BASE + 300_000 + GRACE_MS)])

    expected = expected_windows(rows)
    assert len(expected) == 2 * (12 + 3 + 1)
    assert_windows_match(read_aggregates(settings, set(expected)), expected)


def test_worker_declares_topics_from_the_catalogue(
    telemetry: tuple[Settings, FaustWorker],
) -> None:
    settings, _ = telemetry
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    # The analytics and inference workers declare their own (their tests check them).
    theirs = (ALERTS, METRICS_ENERGY, ANALYTICS_TEMPORAL, CAMERA_FRAMES, STATE_ANALYTICS)
    theirs_too = (*ANALYSIS_REQUESTS, ANALYSIS_CANCEL, ANALYSIS_EVENTS)  # the inference worker's
    wanted = {spec.name(settings) for spec in CATALOGUE if spec not in theirs + theirs_too}
    deadline = time.monotonic() + 30
    while not wanted <= set(topics := admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, f"missing {wanted - set(topics)}"
        time.sleep(0.1)  # polling the cluster's metadata for a condition
    assert len(topics[METRICS_MODEL.name(settings)].partitions) == settings.topic_partitions
    assert len(topics[DEADLETTER.name(settings)].partitions) == 1
    resource = ConfigResource(ConfigResource.Type.TOPIC, METRICS_AGGREGATES.name(settings))
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    assert config["cleanup.policy"].value == "compact"


def test_a_producer_that_waits_for_ready_finds_the_inputs_with_their_partitions(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    """No Faust agent reads the collector topics (the windows stage does, itself): the
    stage creates them before the worker says Ready, else the producer's first write
    has the broker auto-create one with a single partition (CI saw it)."""
    settings = settings_for(kafka, tmp_path, topic_partitions=3)
    worker = FaustWorker(settings, tmp_path / "worker.log")
    worker.start()
    try:
        src = source()
        produce(settings, METRICS_MODEL.name(settings), [closer(src, BASE)])
        admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
        topics = admin.list_topics(timeout=10).topics
        assert len(topics[METRICS_MODEL.name(settings)].partitions) == 3
    finally:
        worker.stop()


def test_grace_admits_out_of_order_samples_and_later_ones_go_to_late_events(
    telemetry: tuple[Settings, FaustWorker],
) -> None:
    settings, _ = telemetry
    src = source()

    def one(ts: int, value: float) -> tuple[bytes, bytes]:
        return src.encode(), envelope([Row(src, ts, {"x": value})])

    placed = produce(
        settings,
        METRICS_MODEL.name(settings),
        [
            one(BASE + 100, 1.0),
            one(BASE + 1_400, 2.0),
            one(BASE + 900, 4.0),  # out of order, within grace: counted
            one(BASE + 2_500, 8.0),  # stream time 2.5 s closes [0 s, 1 s)
            one(BASE + 950, 16.0),  # too late for its 1 s window, on time for 10 s
            closer(src, BASE + 300_000 + GRACE_MS),
        ],
    )
    first_1s = f"{src}|x|1s|{BASE}"
    first_10s = f"{src}|x|10s|{BASE}"
    got = read_aggregates(settings, {first_1s, first_10s})
    assert (got[first_1s]["count"], got[first_1s]["sum"]) == (2, 5.0)
    assert (got[first_10s]["count"], got[first_10s]["sum"]) == (5, 31.0)

    late = read_until(settings, METRICS_LATE.name(settings), lambda ms: len(ms) >= 1, timeout_s=30)
    record = orjson.loads(late[0].value() or b"{}")
    assert record["window"] == "1s"
    assert record["window_start_ms"] == BASE
    assert record["stream_time_ms"] == BASE + 2_500
    assert (record["timestamp"], record["data"]) == ([BASE + 950], {"x": [16.0]})
    assert (record["partition"], record["offset"]) == placed[4]


def test_bad_messages_go_to_dead_letters_and_the_stream_goes_on(
    telemetry: tuple[Settings, FaustWorker],
) -> None:
    settings, _ = telemetry
    src = source()
    key = src.encode()
    over_budget = [Row(src, BASE + 500 + i, {"x": 1.0}) for i in range(61)]  # 61 in 1 s
    bad = [
        (b"{not json", "bad_json"),
        (orjson.dumps({"source": src, "type": "metrics", "data": {}}), "missing_field"),
        (
            orjson.dumps({"timestamp": BASE, "source": src, "type": "metrics", "data": {"x": "a"}}),
            "invalid_field",
        ),
        (envelope([Row("ui", BASE, {"x": 1.0})]), "wrong_topic"),  # ui data on the model topic
        (envelope(over_budget), "rate_limited"),
        # The source already has 201 fields; 100 more would pass KESTREL_MAX_FIELDS (256).
        (envelope([Row(src, BASE + 30, {f"g{i}": 1.0 for i in range(100)})]), "too_many_fields"),
    ]
    wide = envelope([Row(src, BASE + 5, {"x": 2.0, **{f"f{i}": 1.0 for i in range(200)}})])
    good = [wide, envelope([Row(src, BASE + 20, {"x": 3.0})])]
    sequence = [good[0], *(raw for raw, _ in bad), good[1], closer(src, BASE + 5_000)[1]]
    placed = produce(settings, METRICS_MODEL.name(settings), [(key, v) for v in sequence])

    letters = read_until(
        settings,
        DEADLETTER.name(settings),
        lambda ms: len(ms) >= len(bad),
        timeout_s=60,
    )
    assert [m.value() for m in letters] == [raw for raw, _ in bad]  # untouched originals
    where = placed[1 : 1 + len(bad)]
    for message, (_, reason), (partition, offset) in zip(letters, bad, where, strict=True):
        raw_headers = message.headers() or []
        pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
        letter = DeadLetter.from_headers({k: v for k, v in pairs if isinstance(v, bytes)})
        assert letter.reason == reason
        assert (letter.topic, letter.partition, letter.offset) == (
            METRICS_MODEL.name(settings),
            partition,
            offset,
        )
        assert letter.error

    got = read_aggregates(settings, {f"{src}|x|1s|{BASE}"})
    assert (got[f"{src}|x|1s|{BASE}"]["count"], got[f"{src}|x|1s|{BASE}"]["sum"]) == (2, 5.0)


def test_a_worker_killed_mid_stream_resumes_without_losing_or_double_counting(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    # No commit before the kill: the restarted worker must replay all it had done.
    settings = settings_for(
        kafka,
        tmp_path,
        window_grace_s=GRACE_MS / 1000,
        flush_interval_s=0.1,
        commit_interval_s=120,
        session_timeout_s=6,
    )
    sources = [source() for _ in range(3)]
    streams = {src: rows_for(src, BASE, 600, 50, seed=i) for i, src in enumerate(sources)}
    split = 400  # rows of each source before the kill; the rest after
    first = interleaved([streams[src][:split] for src in sources], 4)
    rest = interleaved([streams[src][split:] for src in sources], 4)

    worker = FaustWorker(settings, tmp_path / "worker.log")
    worker.start()
    try:
        produce(settings, METRICS_MODEL.name(settings), first)
        # Mid-stream: windows are being emitted, state is in the table, nothing committed.
        early = {f"{src}|tokens_per_second|1s|{BASE}" for src in sources}
        read_aggregates(settings, early)
        worker.kill()

        produce(settings, METRICS_MODEL.name(settings), rest)
        produce(
            settings,
            METRICS_MODEL.name(settings),
            [closer(src, BASE + 300_000 + GRACE_MS) for src in sources],
        )
        worker.start()
        expected = expected_windows(row for rows in streams.values() for row in rows)
        assert_windows_match(read_aggregates(settings, set(expected)), expected)
        # The restarted worker restored its markers, then replayed and skipped, from the
        # start (nothing was committed), what it had done before the kill.
        worker.wait_for_log("replayed messages, at or below the markers", timeout_s=30)
        log = worker.log_since_start()
        # Each partition that replayed restored first (the sources may all hash to one
        # partition: the other's restore is then unrelated and may come later).
        replayed = re.findall(r"windows\[(\d+)\]: skipped \d+ replayed", log)
        assert replayed
        for p in replayed:
            restored = log.index(f"windows[{p}] restored")
            assert restored < log.index(f"windows[{p}]: skipped")
    finally:
        worker.stop()


def test_the_model_metrics_client_feeds_the_windows(
    telemetry: tuple[Settings, FaustWorker],
) -> None:
    settings, _ = telemetry
    src = source()
    rows = rows_for(src, BASE, 120, 25, seed=5)  # 40 Hz for 3 s
    with ModelMetrics(src, settings, interval_s=0.05) as metrics:
        for row in rows:
            assert metrics.record(row.ts, **row.data)
        metrics.record(BASE + 10_000 + GRACE_MS, tokens_per_second=0.0)  # closes them
    expected = expected_windows(rows, windows=["1s"])
    assert_windows_match(read_aggregates(settings, set(expected)), expected)


def test_the_model_cli_reads_json_lines(telemetry: tuple[Settings, FaustWorker]) -> None:
    settings, _ = telemetry
    src = source()
    lines = [f'{{"timestamp": {BASE + 100 * i}, "queue_wait_ms": {i}}}' for i in range(10)]
    lines += ["not json", f'{{"timestamp": {BASE + 5_000}, "queue_wait_ms": 0}}']
    result = subprocess.run(
        [sys.executable, "-m", "kestrel.collectors.cli", "model", "--source", src],
        input="\n".join(lines),
        text=True,
        capture_output=True,
        env=child_environment(settings),
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr  # one bad line, said so
    assert "line 11 skipped" in result.stderr
    got = read_aggregates(settings, {f"{src}|queue_wait_ms|1s|{BASE}"})
    assert (
        got[f"{src}|queue_wait_ms|1s|{BASE}"]["count"],
        got[f"{src}|queue_wait_ms|1s|{BASE}"]["sum"],
    ) == (10, 45.0)


def test_windows_stay_exact_when_workers_join_and_leave(kafka: LocalKafka, tmp_path: Path) -> None:
    namespace = f"t{uuid.uuid4().hex[:12]}"

    def worker_settings(name: str) -> Settings:
        # One namespace (one consumer group), a data directory each.
        (tmp_path / name).mkdir()
        return settings_for(
            kafka,
            tmp_path / name,
            namespace=namespace,
            window_grace_s=GRACE_MS / 1000,
            flush_interval_s=0.2,
            session_timeout_s=6,
        )

    first_settings, second_settings = worker_settings("a"), worker_settings("b")
    sources = [source() for _ in range(6)]  # spread over both partitions
    streams = {src: rows_for(src, BASE, 600, 50, seed=10 + i) for i, src in enumerate(sources)}
    thirds = [
        interleaved([streams[src][lo:hi] for src in sources], 4)
        for lo, hi in ((0, 200), (200, 400), (400, 600))
    ]
    first = FaustWorker(first_settings, tmp_path / "a.log")
    second = FaustWorker(second_settings, tmp_path / "b.log")
    try:
        first.start()
        produce(first_settings, METRICS_MODEL.name(first_settings), thirds[0])
        read_aggregates(first_settings, {f"{src}|tokens_per_second|1s|{BASE}" for src in sources})

        second.start()  # the group splits the partitions between the two
        produce(first_settings, METRICS_MODEL.name(first_settings), thirds[1])
        first.stop()  # a clean leave: the second worker takes every partition
        produce(first_settings, METRICS_MODEL.name(first_settings), thirds[2])
        produce(
            first_settings,
            METRICS_MODEL.name(first_settings),
            [closer(src, BASE + 300_000 + GRACE_MS) for src in sources],
        )
        expected = expected_windows(row for rows in streams.values() for row in rows)
        assert_windows_match(read_aggregates(first_settings, set(expected)), expected)
        assert "windows[0] restored" in second.log_since_start()  # it took over state
        assert "windows[1] restored" in second.log_since_start()
    finally:
        first.stop()
        second.stop()


def test_a_worker_commits_past_transaction_markers(
    telemetry: tuple[Settings, FaustWorker],
) -> None:
    """A topic written in transactions has a commit marker after each batch; the group
    must still commit up to its last record (kestrel.reader commits acked offsets)."""
    settings, _ = telemetry
    src = source()
    topic = METRICS_MODEL.name(settings)
    producer = Producer(
        {"bootstrap.servers": settings.bootstrap_servers, "transactional.id": f"t-{src}"}
    )
    producer.init_transactions(30)
    placed: list[tuple[int, int]] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        assert err is None and msg.partition() is not None and msg.offset() is not None
        placed.append((msg.partition() or 0, msg.offset() or 0))

    for row in rows_for(src, BASE, 200, 50, seed=3):  # a transaction each: 200 markers
        producer.begin_transaction()
        producer.produce(topic, envelope([row]), src.encode(), on_delivery=delivered)
        producer.commit_transaction(30)
    partition, last = placed[-1]
    group = settings.app_id("windows")  # the stage's own group (kestrel.reader)
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group})
    try:
        deadline = time.monotonic() + 60
        while True:
            [committed] = consumer.committed([TopicPartition(topic, partition)], timeout=10)
            if committed.offset == last + 1:
                break
            # Faust's own gap handling advanced about one record per commit: 200 s here.
            assert time.monotonic() < deadline, f"committed {committed.offset}, last record {last}"
            time.sleep(0.2)  # polling the group's offsets for a condition
    finally:
        consumer.close()


def test_a_backlog_is_taken_in_batches_by_the_stages_own_group(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    """The windows stage reads its topics itself, many messages at a time, with a group
    of its own (kestrel.reader): Faust's one-message path would cap it (faust#563)."""
    stats = tmp_path / "stats.json"
    settings = settings_for(kafka, tmp_path, window_grace_s=GRACE_MS / 1000, stats_path=stats)
    ensure_topics(settings)
    streams = [rows_for(source(), BASE, 300, 20, seed=i) for i in range(4)]  # 50 Hz each
    backlog = interleaved(streams, 2)
    produce(settings, METRICS_MODEL.name(settings), backlog)  # before the worker starts
    closers = [closer(rows[0].source, BASE + 300_000 + GRACE_MS) for rows in streams]
    worker = FaustWorker(settings, tmp_path / "worker.log")
    worker.start()
    try:
        produce(settings, METRICS_MODEL.name(settings), closers)
        expected = expected_windows(row for rows in streams for row in rows)
        assert_windows_match(read_aggregates(settings, set(expected)), expected)
        deadline = time.monotonic() + 30
        while True:
            done = orjson.loads(stats.read_bytes()) if stats.exists() else {}
            if done.get("messages", 0) >= len(backlog) + len(closers):
                break
            assert time.monotonic() < deadline, done
            time.sleep(0.2)  # the worker writes its stats each second
        assert done["batches"] * 5 <= done["messages"], done
    finally:
        worker.stop()
    topic = METRICS_MODEL.name(settings)
    partitions = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
    for group, reads in ((settings.app_id("windows"), True), (settings.app_id("stream"), False)):
        consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group})
        try:
            offsets = [tp.offset for tp in consumer.committed(partitions, timeout=10)]
        finally:
            consumer.close()
        assert (sum(max(o, 0) for o in offsets) > 0) is reads, (group, offsets)
