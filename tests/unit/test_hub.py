"""The hub's per-client sender: pacing per key, in the event loop, no sockets."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from web.backpressure import KeyPacer
from web.hub import Hub

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def test_a_key_held_back_by_its_pace_does_not_delay_another_key() -> None:
    sent: list[tuple[str, int]] = []
    arrived = asyncio.Condition()

    async def send(raw: bytes) -> None:
        message = orjson.loads(raw)
        if message["type"] == "update":
            async with arrived:
                sent.append((message["key"], message["payload"]))
                arrived.notify_all()

    async def until(count: int) -> None:
        async with arrived:
            await asyncio.wait_for(arrived.wait_for(lambda: len(sent) >= count), 10)

    hub = Hub()
    client = hub.connect(send)
    client.buffer.pacer = KeyPacer(hz=1.0)  # a held key waits a whole second
    client.subscriptions.update({"metrics:m", "camera:c"})
    try:
        for n in (1, 2):  # spend the burst of "latest"
            hub.publish("metrics:m", "latest", n)
            await until(n)
        hub.publish("metrics:m", "latest", 3)  # held: no token for a second
        for _ in range(3):  # loop turns (not time): the sender takes, holds, and waits
            await asyncio.sleep(0)
        assert sent == [("latest", 1), ("latest", 2)] and client.buffer.items
        hub.publish("camera:c", "result", 1)  # news while a key is held
        await until(4)
        assert sent == [("latest", 1), ("latest", 2), ("result", 1), ("latest", 3)]
    finally:
        await hub.disconnect(client)


async def test_updates_shed_by_a_full_buffer_are_told_even_when_the_state_settles_back() -> None:
    """A full buffer sheds and, once the sender takes what it holds, settles back to
    normal within one turn: the client must still hear that updates were shed."""
    told: list[dict[str, object]] = []
    got = asyncio.Event()

    async def send(raw: bytes) -> None:
        message = orjson.loads(raw)
        if message["type"] == "backpressure":
            told.append(message["payload"])
            got.set()

    hub = Hub(total_buffer_bytes=200 * 4096)  # 4 KiB a client
    client = hub.connect(send)
    client.subscriptions.add("analysis:r1")
    try:
        for seq in range(10):  # 10 KB at once into 4 KiB: the last ones are shed
            hub.publish("analysis:r1", str(seq), "x" * 1000)
        await asyncio.wait_for(got.wait(), 5)
        assert told[-1]["shed"] == {"analysis:r1": sum(client.buffer.shed.values())}
        assert sum(client.buffer.shed.values()) > 0
    finally:
        await hub.disconnect(client)
