"""Fair share: what a client costs the server is bounded by what it reads."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect

from tests.web.test_protocol import (
    Server,
    hello,
    publisher,
    read_updates,
    reader_and_stalled,
    receive,
    stalled_socket,
    without_kafka,
)
from web.__main__ import SEND_BUFFER_BYTES
from web.backpressure import BACKFILL_HZ

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.05)


class ServerErrors(logging.Handler):
    """What uvicorn logs as errors (its loggers do not reach pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []
        logging.getLogger("uvicorn.error").addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_a_client_that_takes_nothing_is_closed_after_the_stall_deadline(
    tmp_path: Path,
) -> None:
    server = Server(without_kafka(tmp_path, web_stall_s=1.0))
    server.start()
    errors = ServerErrors()
    hub = server.dashboard.hub
    publish = publisher(server, "metrics:flood", {"blob": os.urandom(1_000).hex()})
    try:
        async with reader_and_stalled(server, "metrics:flood") as (reader, stalled):
            got, chunk = 0, 0
            while hub.stalled == 0:  # the reader keeps up; the stalled one fills its socket
                assert chunk < 500, "the stalled client was never closed"
                publish(chunk)
                chunk += 1
                got = await read_updates(reader, got, chunk * 100)
            await until(lambda: len(hub.clients) == 1, 10, "the stalled client dropped")
            assert got == chunk * 100  # the reader lost nothing meanwhile
            # It can still write: the server, past its close, ends the connection quietly.
            await stalled.send(orjson.dumps({"type": "ping", "payload": {}}).decode())
            connections = server.server.server_state.connections
            await until(lambda: len(connections) == 1, 20, "the stalled socket closed")
            assert errors.messages == []
            await reader.send(orjson.dumps({"type": "ping", "id": "ok", "payload": {}}).decode())
            while (await receive(reader)).get("correlation_id") != "ok":
                pass
    finally:
        server.stop()
        logging.getLogger("uvicorn.error").removeHandler(errors)


async def test_a_client_that_stops_reading_takes_a_send_buffer_then_only_coalesced_slots(
    tmp_path: Path,
) -> None:
    """Linux grows a socket's send buffer up to 4 MiB: without the server's bound, the
    stalled client below takes ~3 MB of writes (1400 updates, as many as a reader's
    worth for seconds) before the hub notices and coalesces."""
    server = Server(without_kafka(tmp_path, web_stall_s=5.0))
    server.start()
    hub = server.dashboard.hub
    payload = {"blob": os.urandom(1_000).hex()}
    publish = publisher(server, "metrics:big", payload)
    try:
        async with reader_and_stalled(server, "metrics:big") as (reader, _):
            stalled_client = max(hub.clients.values(), key=lambda c: int(c.client_id[1:]))
            got = 0
            for chunk in range(30):  # 3000 updates, 6 MB
                publish(chunk)
                got = await read_updates(reader, got, (chunk + 1) * 100)
            size = len(
                orjson.dumps(
                    {
                        "v": 1,
                        "type": "update",
                        "channel": "metrics:big",
                        "seq": 1000,
                        "key": "agg:10:10",
                        "payload": payload,
                    }
                )
            )
            # The kernel doubles SO_SNDBUF for its bookkeeping; the client's 4 KB on top.
            assert stalled_client.delivered * size <= 3 * SEND_BUFFER_BYTES
            assert sum(stalled_client.buffer.shed.values()) > 0  # the rest was coalesced
            assert got == 3000
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


async def test_an_sse_client_that_stops_reading_is_dropped_and_its_socket_freed(
    tmp_path: Path,
) -> None:
    server = Server(without_kafka(tmp_path, web_stall_s=1.0))
    server.start()
    errors = ServerErrors()
    hub = server.dashboard.hub
    publish = publisher(server, "metrics:big", {"blob": os.urandom(1_000).hex()})
    stalled = stalled_socket(server.port)
    try:
        request = "GET /api/v1/stream?channels=metrics:big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        stalled.sendall(request.encode())  # and never read a byte of the answer
        await until(lambda: len(hub.clients) == 1, 10, "the SSE client registered")

        chunk = 0
        while hub.stalled == 0:
            assert chunk < 1000, "the stalled SSE client was never dropped"
            publish(chunk)
            chunk += 1
            await asyncio.sleep(0.05)  # a publisher's pace; the condition is the loop's
        connections = server.server.server_state.connections
        await until(lambda: not connections and not hub.clients, 20, "the SSE socket freed")
        assert errors.messages == []
    finally:
        stalled.close()
        server.stop()
        logging.getLogger("uvicorn.error").removeHandler(errors)
