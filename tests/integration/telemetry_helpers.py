"""Producing collector messages and computing the windows they must give, exactly."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import orjson
from confluent_kafka import KafkaError, Message, Producer

from kestrel.settings import Settings
from kestrel.topics import METRICS_AGGREGATES
from tests.kafka_helpers import read_until

SIZES = {"1s": 1_000, "10s": 10_000, "5m": 300_000}


@dataclass(frozen=True)
class Row:
    """One sample row of one source: a timestamp and its field values."""

    source: str
    ts: int
    data: dict[str, float | None]


def envelope(rows: list[Row]) -> bytes:
    """A batched envelope: latest row in ``data``, every row in ``samples``."""
    names = sorted({name for row in rows for name in row.data})
    return orjson.dumps(
        {
            "timestamp": rows[-1].ts,
            "source": rows[-1].source,
            "type": "metrics",
            "data": rows[-1].data,
            "samples": {
                "timestamp": [row.ts for row in rows],
                "data": {name: [row.data.get(name) for row in rows] for name in names},
            },
        }
    )


def produce(
    settings: Settings, topic: str, messages: Iterable[tuple[bytes, bytes]]
) -> list[tuple[int, int]]:
    """Send (key, value) pairs; return where each landed as (partition, offset)."""
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5})
    placed: dict[int, tuple[int, int]] = {}

    def on_delivery(index: int) -> Callable[[KafkaError | None, Message], None]:
        def delivered(err: KafkaError | None, msg: Message) -> None:
            assert err is None, err
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            placed[index] = (partition, offset)

        return delivered

    count = 0
    for count, (key, payload) in enumerate(messages, start=1):
        producer.produce(topic, payload, key, on_delivery=on_delivery(count - 1))
        producer.poll(0)
    assert producer.flush(30) == 0
    return [placed[i] for i in range(count)]


def expected_windows(
    rows: Iterable[Row], windows: Iterable[str] = SIZES
) -> dict[str, dict[str, object]]:
    """Exact count/sum/min/max/last per aggregate key, and the values for quantiles."""
    values: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        for name, value in row.data.items():
            if value is None:
                continue
            for window in windows:
                start = row.ts - row.ts % SIZES[window]
                values[f"{row.source}|{name}|{window}|{start}"].append((row.ts, value))
    expected: dict[str, dict[str, object]] = {}
    for key, samples in values.items():
        numbers = [v for _, v in samples]
        expected[key] = {
            "count": len(numbers),
            "sum": float(sum(numbers)),
            "min": min(numbers),
            "max": max(numbers),
            "last": max(samples, key=lambda s: s[0])[1],
            "values": numbers,
        }
    return expected


def read_aggregates(
    settings: Settings, keys: set[str], timeout_s: float = 60
) -> dict[str, dict[str, object]]:
    """Read ``metrics.aggregates`` until every key is there; fail on conflicting copies."""

    def keys_seen(messages: list[Message]) -> set[str]:
        return {(m.key() or b"").decode() for m in messages} & keys

    seen: list[Message] = []

    def done(messages: list[Message]) -> bool:
        seen[:] = messages
        return keys_seen(messages) == keys

    try:
        messages = read_until(settings, METRICS_AGGREGATES.name(settings), done, timeout_s)
    except AssertionError as exc:
        missing = sorted(keys - keys_seen(seen))
        others = sorted({(m.key() or b"").decode() for m in seen} - keys)
        sources = sorted({k.split("|")[0] for k in others})
        raise AssertionError(
            f"{exc}; missing {missing[:5]}...; other keys {others[:5]} of {sources}"
        ) from None
    got: dict[str, dict[str, object]] = {}
    for message in messages:
        key = (message.key() or b"").decode()
        if key not in keys:
            continue
        record = orjson.loads(message.value() or b"{}")
        # A window re-emitted after a crash must say the same thing: the compacted
        # topic keeps one record per key, so a differing copy would be a wrong result.
        assert got.setdefault(key, record) == record, f"{key} emitted twice, differently"
    return got


def assert_windows_match(
    got: dict[str, dict[str, object]], expected: dict[str, dict[str, object]]
) -> None:
    assert set(got) == set(expected)
    for key, want in expected.items():
        record = got[key]
        for stat in ("count", "sum", "min", "max", "last"):
            assert record[stat] == want[stat], (key, stat, record[stat], want[stat])
        numbers = np.asarray(want["values"], dtype=np.float64)
        for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            exact = float(np.quantile(numbers, q, method="lower"))
            estimate = float(str(record[name]))
            assert abs(estimate - exact) <= 0.01 * abs(exact) + 1e-9, (key, name, estimate, exact)
