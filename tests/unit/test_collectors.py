from __future__ import annotations

from typing import Any

import orjson

from kestrel.collectors.publisher import BatchingPublisher, batch_envelope
from kestrel.collectors.system import GpuSampler, SystemSampler
from kestrel.schemas import parse_envelope


class RecordingProducer:
    """Stands in for Kafka in a unit test of batching; integration tests use the broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, dict[str, Any]]] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None, **kw: Any) -> None:
        self.sent.append((topic, value, key, kw))


def test_a_batch_is_a_valid_digest_envelope_with_every_sample() -> None:
    raw = batch_envelope("model:m", [(1000, {"a": 1.0}), (1016, {"a": 2.0, "b": 5.0})])
    envelope = parse_envelope(raw)
    assert (envelope.timestamp, envelope.data) == (1016, {"a": 2.0, "b": 5.0})
    assert envelope.samples is not None
    assert envelope.samples.timestamp == [1000, 1016]
    assert envelope.samples.data == {"a": [1.0, 2.0], "b": [None, 5.0]}


def test_a_single_sample_is_the_plain_envelope() -> None:
    message = orjson.loads(batch_envelope("ui", [(5, {"frame_time_ms": 16.0})]))
    assert "samples" not in message
    assert parse_envelope(orjson.dumps(message)).data == {"frame_time_ms": 16.0}


def test_publisher_sends_one_message_per_interval_and_keeps_the_budget() -> None:
    producer = RecordingProducer()
    publisher = BatchingPublisher(producer, "ns.metrics.model", "model:m", max_hz=60)  # type: ignore[arg-type]
    accepted = [publisher.record({"x": float(i)}, timestamp_ms=10_000 + i) for i in range(70)]
    assert accepted.count(True) == 60 and publisher.dropped == 10
    publisher.publish()
    publisher.publish()  # nothing pending: nothing sent
    assert len(producer.sent) == 1
    topic, value, key, kw = producer.sent[0]
    envelope = parse_envelope(value)
    assert (topic, key, kw["timestamp_ms"]) == ("ns.metrics.model", b"model:m", 10_059)
    assert envelope.samples is not None and len(envelope.samples.timestamp) == 60


def test_system_sample_has_every_digest_field_and_gpu_fields_follow_nvml() -> None:
    sample = SystemSampler().sample()
    assert set(sample) == {
        "cpu_percent",
        "memory_percent",
        "gpu_utilization",
        "gpu_memory_mb",
        "disk_io_read_mb",
        "disk_io_write_mb",
        "network_bytes_in",
        "network_bytes_out",
    }
    assert sample["memory_percent"] is not None and 0 < sample["memory_percent"] <= 100
    if GpuSampler().handles:  # a machine with an NVIDIA GPU and driver
        assert sample["gpu_utilization"] is not None and sample["gpu_memory_mb"] is not None
        assert sample["gpu_memory_mb"] > 0
    else:  # NVML finds nothing: unknown, not zero
        assert sample["gpu_utilization"] is None and sample["gpu_memory_mb"] is None
