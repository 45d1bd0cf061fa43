"""A confluent-kafka producer for what Kestrel writes outside transactions.

Collectors, cameras and the inference stage write at least once with it; the stateful
stages write through :mod:`kestrel.state`'s transactional producers instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from kestrel.settings import Settings

log = logging.getLogger(__name__)
#: librdkafka's own log lines (kestrel.logs counts them during an outage).
CLIENT_LOG = logging.getLogger("kestrel.librdkafka")

MAX_MESSAGE_BYTES = 8 * 1024 * 1024 + 64 * 1024  # a frame at the topic limit, plus headers


class KestrelProducer:
    """Asynchronous sends with delivery failures logged and counted, never silent."""

    def __init__(self, settings: Settings, **config: Any) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": settings.bootstrap_servers,
            "linger.ms": 5,
            "enable.idempotence": True,
            "compression.type": "lz4",
            # Frames (and their dead letters) may be up to 8 MB; topics allow it.
            "message.max.bytes": MAX_MESSAGE_BYTES,
        }
        conf.update(config)
        self._producer = Producer(conf, logger=CLIENT_LOG)
        self.delivered = 0
        self.failed = 0

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        log.error("delivery to %s failed: %s", msg.topic(), err)

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        """Queue one message (``value=None``: a tombstone); wait for room when full.

        ``on_delivery`` (after the producer's own accounting) runs in whichever thread
        calls :meth:`poll` or a flush.
        """
        report = self._on_delivery
        if on_delivery is not None:

            def report(err: KafkaError | None, msg: Message) -> None:
                self._on_delivery(err, msg)
                on_delivery(err, msg)

        kwargs: dict[str, Any] = {"on_delivery": report}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                self._producer.produce(topic, value, key, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports that are ready (waiting up to ``timeout_s`` for one);
        return how many were served."""
        served: int = self._producer.poll(timeout_s)
        return served

    def __len__(self) -> int:
        """Messages queued or in flight."""
        return len(self._producer)

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for outstanding deliveries; return how many are still undelivered."""
        remaining: int = self._producer.flush(timeout_s)
        return remaining
