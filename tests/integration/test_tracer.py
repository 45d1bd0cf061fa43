"""The tracer bullet through the real chain, on the project's own broker.

collector-shaped JSON on a collector topic -> the Faust stream worker (run with the
real ``faust -A faust_app worker`` command) -> its 1-second tumbling windowed table ->
``metrics.aggregates``, read back by a plain confluent-kafka consumer.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from kestrel.broker import LocalKafka
from kestrel.deadletter import DeadLetter
from kestrel.settings import Settings
from kestrel.topics import DEADLETTER, METRICS_AGGREGATES, METRICS_MODEL
from tests.conftest import settings_for
from tests.kafka_helpers import FaustWorker, read_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


@pytest.fixture(scope="module")
def stream_worker(
    kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, FaustWorker]]:
    """One stream worker in its own namespace for this module's tests."""
    data_dir = tmp_path_factory.mktemp("tracer")
    settings = settings_for(kafka, data_dir, window_expires_s=1.0, table_cleanup_interval_s=0.25)
    worker = FaustWorker(settings, Path(data_dir) / "worker.log")
    worker.start()
    try:
        yield settings, worker
    finally:
        worker.stop()


def value(message: Message) -> bytes:
    data = message.value()
    assert data is not None
    return data


def headers(message: Message) -> dict[str, bytes]:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {name: data for name, data in pairs if isinstance(data, bytes)}


def produce(settings: Settings, messages: list[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
    """Send (key, value) pairs to the model collector topic; return (partition, offset)s."""
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    placed: dict[int, tuple[int, int]] = {}

    def on_delivery(index: int) -> Callable[[KafkaError | None, Message], None]:
        def delivered(err: KafkaError | None, msg: Message) -> None:
            assert err is None, err
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            placed[index] = (partition, offset)

        return delivered

    for i, (key, payload) in enumerate(messages):
        producer.produce(METRICS_MODEL.name(settings), payload, key, on_delivery=on_delivery(i))
    assert producer.flush(30) == 0
    return [placed[i] for i in range(len(messages))]


def envelope(source: str, timestamp_ms: int, data: dict[str, float | None]) -> bytes:
    return orjson.dumps(
        {"timestamp": timestamp_ms, "source": source, "type": "metrics", "data": data}
    )


def test_windowed_sums_are_exact_across_window_boundaries(
    stream_worker: tuple[Settings, FaustWorker],
) -> None:
    settings, _ = stream_worker
    source = f"model:tracer-{uuid.uuid4().hex[:8]}"
    # Windows close on the wall clock, so the samples sit in the next whole seconds.
    base_ms = (math.ceil(time.time()) + 1) * 1000
    samples = [  # (offset ms from base, tokens_per_second, ttft_ms)
        (100, 1.5, 20.0),
        (450, 2.25, None),  # null: unknown, not zero; it does not count
        (999, 4.0, 30.0),  # last millisecond of window 0
        (1000, 8.0, 40.0),  # first millisecond of window 1
        (1500, 0.5, None),
        (2250, 16.0, 50.0),
    ]
    produce(
        settings,
        [
            (
                source.encode(),
                envelope(source, base_ms + at, {"tokens_per_second": tps, "ttft_ms": ttft}),
            )
            for at, tps, ttft in samples
        ],
    )
    expected = {
        ("tokens_per_second", base_ms): (3, 7.75),
        ("tokens_per_second", base_ms + 1000): (2, 8.5),
        ("tokens_per_second", base_ms + 2000): (1, 16.0),
        ("ttft_ms", base_ms): (2, 50.0),
        ("ttft_ms", base_ms + 1000): (1, 40.0),
        ("ttft_ms", base_ms + 2000): (1, 50.0),
    }

    def ours(messages: list[Message]) -> list[dict[str, object]]:
        return [
            record
            for record in (orjson.loads(value(m)) for m in messages)
            if record["source"] == source
        ]

    messages = read_until(
        settings,
        METRICS_AGGREGATES.name(settings),
        lambda ms: len(ours(ms)) >= len(expected),
        timeout_s=60,
    )
    got: dict[tuple[str, int], tuple[int, float]] = {}
    for record in ours(messages):
        window = (str(record["field"]), int(str(record["window_start_ms"])))
        assert window not in got, f"window emitted twice: {record}"
        assert record["window"] == "1s"
        assert record["window_end_ms"] == window[1] + 1000
        assert record["mean"] == pytest.approx(
            float(str(record["sum"])) / int(str(record["count"]))
        )
        got[window] = (int(str(record["count"])), float(str(record["sum"])))
    assert got == expected
    # Keys let compaction keep exactly one record per window.
    keys = {m.key() for m in messages if orjson.loads(value(m))["source"] == source}
    assert keys == {f"{source}|{f}|1s|{start}".encode() for f, start in expected}


def test_worker_declares_topics_from_the_catalogue(
    stream_worker: tuple[Settings, FaustWorker],
) -> None:
    settings, _ = stream_worker
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    topics = admin.list_topics(timeout=10).topics
    assert len(topics[METRICS_MODEL.name(settings)].partitions) == settings.topic_partitions
    assert len(topics[DEADLETTER.name(settings)].partitions) == 1
    resource = ConfigResource(ConfigResource.Type.TOPIC, METRICS_AGGREGATES.name(settings))
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    assert config["cleanup.policy"].value == "compact"


def test_malformed_messages_go_to_dead_letter_and_the_stream_goes_on(
    stream_worker: tuple[Settings, FaustWorker],
) -> None:
    settings, _ = stream_worker
    source = f"model:dlq-{uuid.uuid4().hex[:8]}"
    base_ms = (math.ceil(time.time()) + 1) * 1000
    key = source.encode()
    bad = [
        (b"{not json", "bad_json"),
        (orjson.dumps({"source": source, "type": "metrics", "data": {}}), "missing_field"),
        (
            orjson.dumps(
                {"timestamp": base_ms, "source": source, "type": "metrics", "data": {"x": "fast"}}
            ),
            "invalid_field",
        ),
        (envelope("nobody", base_ms, {"x": 1.0}), "invalid_field"),
    ]
    good = [envelope(source, base_ms + 10, {"x": 2.0}), envelope(source, base_ms + 20, {"x": 3.0})]
    # Good and bad interleaved: every bad one must not stop the ones after it.
    sequence = [good[0], bad[0][0], bad[1][0], bad[2][0], bad[3][0], good[1]]
    placed = produce(settings, [(key, value) for value in sequence])

    letters = read_until(
        settings,
        DEADLETTER.name(settings),
        lambda ms: sum(1 for m in ms if m.key() == key) >= len(bad),
        timeout_s=60,
    )
    ours = [m for m in letters if m.key() == key]
    assert [value(m) for m in ours] == [raw for raw, _ in bad]  # untouched originals
    for message, (_, reason), (partition, offset) in zip(ours, bad, placed[1:5], strict=True):
        letter = DeadLetter.from_headers(headers(message))
        assert letter.reason == reason
        assert letter.stage == "window_metrics"
        assert (letter.topic, letter.partition, letter.offset) == (
            METRICS_MODEL.name(settings),
            partition,
            offset,
        )
        assert letter.error  # says what was wrong, e.g. "timestamp: Field required"

    aggregates = read_until(
        settings,
        METRICS_AGGREGATES.name(settings),
        lambda ms: any(orjson.loads(value(m))["source"] == source for m in ms),
        timeout_s=60,
    )
    (record,) = [r for r in (orjson.loads(value(m)) for m in aggregates) if r["source"] == source]
    assert (record["count"], record["sum"]) == (2, 5.0)
