"""The inference stage's start, without a broker or a model."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agents import inference


class FakeDetector:
    name = "fake"
    provider = "CPUExecutionProvider"


async def idle() -> None:
    await asyncio.Event().wait()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_both_agents_starting_the_stage_at_once_make_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[float] = []
    producers: list[object] = []

    def load(settings: Any) -> FakeDetector:
        loads.append(time.monotonic())
        time.sleep(0.2)  # a model loads and warms up for a while
        return FakeDetector()

    def producer(*args: Any, **kwargs: Any) -> object:
        made = object()
        producers.append(made)
        return made

    monkeypatch.setattr(inference, "load_detector", load)
    monkeypatch.setattr(inference, "ensure_topics", lambda *args: None)
    monkeypatch.setattr(inference, "KestrelProducer", producer)
    monkeypatch.setattr(inference, "ModelMetrics", lambda *args, **kwargs: object())
    stage = inference.InferenceStage()
    monkeypatch.setattr(stage.registry, "start", lambda: None)
    for task in ("_poll_forever", "_batch_forever", "_follow_cancels"):
        monkeypatch.setattr(stage, task, idle)

    await asyncio.gather(stage.start(), stage.start())  # the frames' and the requests' agents
    try:
        assert len(loads) == 1 and len(producers) == 1
        assert stage.producer is producers[0]  # the one events were sent through stays
    finally:
        for running in (stage._poller, stage._batcher, stage._cancels):
            assert running is not None
            running.cancel()
