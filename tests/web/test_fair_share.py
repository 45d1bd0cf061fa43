"""Fair share: what a client costs the server is bounded by what it reads."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect

from tests.web.test_protocol import Server, hello, receive, subscribe, without_kafka
from web.backpressure import BACKFILL_HZ

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.05)


async def test_a_client_that_takes_nothing_is_closed_after_the_stall_deadline(
    tmp_path: Path,
) -> None:
    server = Server(without_kafka(tmp_path, web_stall_s=1.0))
    server.start()
    hub = server.dashboard.hub
    stalled_sock = socket.socket()
    stalled_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled_sock.connect(("127.0.0.1", server.port))
    payload = {"blob": os.urandom(1_000).hex()}
    try:
        async with (
            connect(server.ws_url) as reader,
            connect(server.ws_url, sock=stalled_sock, max_queue=1) as stalled,
        ):
            for ws in (reader, stalled):
                await hello(ws)
                await subscribe(ws, "metrics:flood")

            def publish(chunk: int) -> None:
                for i in range(100):
                    hub.publish("metrics:flood", f"agg:{chunk}:{i}", payload)

            got, chunk = 0, 0
            while hub.stalled == 0:  # the reader keeps up; the stalled one fills its socket
                assert chunk < 500, "the stalled client was never closed"
                server.call(publish, chunk)
                chunk += 1
                while got < chunk * 100:
                    if (await receive(reader))["type"] == "update":
                        got += 1
            await until(lambda: len(hub.clients) == 1, 10, "the stalled client dropped")
            assert got == chunk * 100  # the reader lost nothing meanwhile
            await reader.send(orjson.dumps({"type": "ping", "id": "ok", "payload": {}}).decode())
            while (await receive(reader)).get("correlation_id") != "ok":
                pass
    finally:
        server.stop()


async def test_a_subscribe_flood_is_rate_limited_and_costs_a_backfill_a_second(
    tmp_path: Path,
) -> None:
    server = Server(without_kafka(tmp_path))
    server.start()
    sub = orjson.dumps({"type": "subscribe", "payload": {"channels": ["alerts"]}}).decode()
    unsub = orjson.dumps({"type": "unsubscribe", "payload": {"channels": ["alerts"]}}).decode()
    try:
        async with connect(server.ws_url) as calm, connect(server.ws_url) as flood:
            await hello(calm)
            await hello(flood)
            started = time.monotonic()
            for i in range(200):  # as fast as the socket takes them: far above 50 a second
                await flood.send(sub if i % 2 == 0 else unsub)
            await calm.send(orjson.dumps({"type": "ping", "id": "c", "payload": {}}).decode())
            assert (await receive(calm))["correlation_id"] == "c"  # served meanwhile
            await until(lambda: server.dashboard.refused > 0, 10, "the flood refused")
            kinds: list[str] = []
            codes: list[str] = []
            await flood.send(orjson.dumps({"type": "pong", "payload": {}}).decode())
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    message = orjson.loads(await asyncio.wait_for(flood.recv(), 0.5))
                except TimeoutError:
                    continue
                kinds.append(message["type"])
                if message["type"] == "error":
                    codes.append(message["payload"]["code"])
            elapsed = time.monotonic() - started
            await calm.send(orjson.dumps({"type": "ping", "id": "d", "payload": {}}).decode())
            assert (await receive(calm))["correlation_id"] == "d"
        assert "rate_limited" in codes
        # Each backfill replaces the waiting one and goes out at most BACKFILL_HZ a
        # second (after a burst of two): 100 subscribes are not 100 backfills.
        assert 1 <= kinds.count("backfill") <= 2 + BACKFILL_HZ * elapsed
        assert kinds.count("subscribed") <= 50 * (elapsed + 1)
    finally:
        server.stop()
