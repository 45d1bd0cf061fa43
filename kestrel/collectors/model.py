"""Model metrics from any model server, in a few lines::

    from kestrel.collectors.model import ModelMetrics

    with ModelMetrics("model:llama7b") as metrics:          # KESTREL_* settings
        ...
        metrics.record(tokens_per_second=41.5, ttft_ms=180.0, queue_wait_ms=3.2,
                       cache_hit_rate=0.82, batch_size=8, vram_used_mb=10240.0)

``record`` is cheap and thread-safe; a background thread publishes the samples every
``interval_s`` as one batched message on the model collector topic. The digest's
fields are ``tokens_per_second``, ``ttft_ms``, ``queue_wait_ms``, ``cache_hit_rate``,
``batch_size``, ``energy_normalized``, ``entropy_bits``, ``gpu_utilization`` and
``vram_used_mb``; any other numeric field is windowed just the same.
"""

from __future__ import annotations

import re
import threading
from types import TracebackType
from typing import Self

from kestrel.collectors.publisher import BatchingPublisher
from kestrel.errors import KestrelError
from kestrel.producer import KestrelProducer
from kestrel.settings import Settings, get_settings
from kestrel.topics import METRICS_MODEL

MODEL_SOURCE = re.compile(r"^model:[A-Za-z0-9._/-]{1,100}$")


class ModelMetrics:
    """A model's metrics publisher: ``record()`` samples, ``close()`` when done."""

    def __init__(
        self, source: str, settings: Settings | None = None, *, interval_s: float = 0.1
    ) -> None:
        if not MODEL_SOURCE.match(source):
            raise KestrelError(f"model source must look like 'model:<name>', got {source!r}")
        self.settings = settings or get_settings()
        self._producer = KestrelProducer(self.settings)
        self._publisher = BatchingPublisher(
            self._producer,
            METRICS_MODEL.name(self.settings),
            source,
            interval_s=interval_s,
            max_hz=self.settings.source_max_hz,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kestrel-{source}", daemon=True)
        self._thread.start()

    def record(self, timestamp_ms: int | None = None, **fields: float | None) -> bool:
        """Record one sample of some fields; False if over the source's budget."""
        return self._publisher.record(fields, timestamp_ms)

    @property
    def dropped(self) -> int:
        """Samples dropped for going over ``KESTREL_SOURCE_MAX_HZ``."""
        return self._publisher.dropped

    def _run(self) -> None:
        while not self._stop.wait(self._publisher.interval_s):
            self._publisher.publish()

    def close(self, timeout_s: float = 10.0) -> int:
        """Publish what is pending, wait for delivery; return undelivered messages."""
        self._stop.set()
        self._thread.join()
        self._publisher.publish()
        return self._producer.flush(timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
