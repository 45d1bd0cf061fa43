"""The telemetry stage's failure path, without a broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agents import telemetry
from faust_app import app
from kestrel.producer import ProducerFlushError
from kestrel.ratelimit import SourceRateLimiter
from tables.metric_windows import store


class FailingProducer:
    """Delivery fails, as when the cluster refuses writes."""

    def send(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def flush_async(self, timeout_s: float = 30.0) -> None:
        raise ProducerFlushError("3 messages undelivered")


class HeldEvent:
    acked = False

    def ack(self) -> None:
        self.acked = True


@pytest.mark.timeout(10)
def test_a_flush_that_cannot_deliver_crashes_the_worker_and_acks_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crashes: list[BaseException] = []

    async def crash(reason: BaseException) -> None:
        crashes.append(reason)

    monkeypatch.setattr(app, "crash", crash)
    stage = telemetry.TelemetryStage(store, SourceRateLimiter(60))
    stage._producer = FailingProducer()  # type: ignore[assignment]
    event = HeldEvent()
    stage.held.append(event)  # type: ignore[arg-type]

    asyncio.run(stage.flush())

    assert [type(c) for c in crashes] == [ProducerFlushError]
    assert not event.acked
    assert not stage.flushing
