"""The WebSocket protocol against the real server (uvicorn) with a real client.

No broker here: the server runs without its Kafka feed, and the tests put updates
into its hot cache directly; tests/integration drives it from a live pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from kestrel.schemas import Alert
from kestrel.settings import load_settings
from tests.conftest import free_port
from web.__main__ import DashboardServer, server_config
from web.app import FLOOD_CLOSE_AFTER_S, MAX_MESSAGES_PER_S, Dashboard, create_app
from web.backpressure import State

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


class Server:
    """uvicorn serving a dashboard app in a thread of this process."""

    def __init__(self, app: Starlette, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dashboard: Dashboard = app.state.dashboard
        config = server_config(app, self.dashboard.settings, self.port, log_level="warning")
        self.server = DashboardServer(config, self.dashboard.settings.web_stall_s)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:  # uvicorn's own readiness flag
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    def call(self, fn: Any, *args: Any) -> None:
        """Run ``fn`` on the server's event loop (the cache is not thread-safe)."""
        assert self.dashboard.loop is not None
        done = threading.Event()

        def run() -> None:
            fn(*args)
            done.set()

        self.dashboard.loop.call_soon_threadsafe(run)
        assert done.wait(10)


def without_kafka(tmp_path: Path, **settings: object) -> Starlette:
    return create_app(load_settings(data_dir=tmp_path, **settings), follow_kafka=False)


async def receive(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    return message


async def hello(ws: ClientConnection, **payload: object) -> dict[str, Any]:
    await ws.send(orjson.dumps({"v": 1, "type": "hello", "payload": payload}).decode())
    return await receive(ws)


def alert(state: str, timestamp: int) -> Alert:
    return Alert.model_validate(
        {
            "alert_id": "frame_budget_breach|ui|frame_time_ms",
            "rule": "frame_budget_breach",
            "kind": "temporal",
            "check": "frame_time_ms <= 16.67 always",
            "state": state,
            "severity": "warning",
            "source": "ui",
            "field": "frame_time_ms",
            "value": 30.0,
            "window": {"start_ms": 1, "end_ms": timestamp},
            "evidence": {},
            "raised_at_ms": 1,
            "timestamp": timestamp,
            "violations": 1,
        }
    )


async def test_hello_subscribe_backfill_then_live_updates_with_sequence_numbers(
    server: Server,
) -> None:
    server.call(server.dashboard.cache.add_alert, alert("active", 10))
    async with connect(server.ws_url) as ws:
        welcome = await hello(ws)
        assert welcome["type"] == "welcome" and welcome["payload"]["max_hz"] == 60
        await ws.send(
            orjson.dumps(
                {"type": "subscribe", "id": "s1", "payload": {"channels": ["alerts"]}}
            ).decode()
        )
        subscribed = await receive(ws)
        assert (subscribed["type"], subscribed["correlation_id"]) == ("subscribed", "s1")
        backfill = await receive(ws)
        assert (backfill["type"], backfill["channel"], backfill["seq"]) == ("backfill", "alerts", 0)
        assert [a["state"] for a in backfill["payload"]["active"]] == ["active"]
        server.call(server.dashboard.cache.add_alert, alert("cleared", 20))
        update = await receive(ws)
        assert (update["type"], update["channel"], update["seq"]) == ("update", "alerts", 1)
        assert update["key"] == "frame_budget_breach|ui|frame_time_ms"
        assert update["payload"]["state"] == "cleared"


async def test_the_system_channel_sends_the_server_s_status_each_second(server: Server) -> None:
    async with connect(server.ws_url) as ws:
        await hello(ws)
        await subscribe(ws, "system")
        update = await receive(ws)  # within the second (receive waits up to 10 s)
        assert (update["type"], update["channel"], update["key"]) == ("update", "system", "status")
        assert update["payload"]["websocket"]["clients"] == 1
        assert update["payload"]["server"]["rss_mb"] > 0


async def test_bad_frames_get_clear_errors_and_the_connection_goes_on(server: Server) -> None:
    async with connect(server.ws_url) as ws:
        await hello(ws)
        await ws.send("{not json")
        error = await receive(ws)
        assert error["type"] == "error"
        assert (error["payload"]["code"], error["payload"]["recoverable"]) == ("bad_json", True)
        await ws.send(
            orjson.dumps({"type": "subscribe", "payload": {"channels": ["everything"]}}).decode()
        )
        assert (await receive(ws))["payload"]["code"] == "unknown_channel"
        await ws.send(orjson.dumps({"type": "launch", "payload": {}}).decode())
        assert (await receive(ws))["payload"]["code"] == "bad_message"
        await ws.send(orjson.dumps({"type": "ping", "id": "p", "payload": {"t": 1}}).decode())
        pong = await receive(ws)
        assert (pong["type"], pong["correlation_id"], pong["payload"]) == ("pong", "p", {"t": 1})


async def test_hello_must_come_first(server: Server) -> None:
    async with connect(server.ws_url) as ws:
        await ws.send(orjson.dumps({"type": "ping", "payload": {}}).decode())
        error = await receive(ws)
        assert (error["payload"]["code"], error["payload"]["recoverable"]) == ("hello_first", False)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4002


async def test_a_configured_token_is_checked(tmp_path: Path) -> None:
    secured = Server(without_kafka(tmp_path, web_token="s3cret"))
    secured.start()
    try:
        async with connect(secured.ws_url) as ws:
            assert (await hello(ws, token="guess"))["payload"]["code"] == "unauthorized"
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
        async with connect(secured.ws_url) as ws:
            assert (await hello(ws, token="s3cret"))["type"] == "welcome"
    finally:
        secured.stop()


async def test_a_flooding_client_is_limited_then_closed_and_others_are_served(
    server: Server,
) -> None:
    async with connect(server.ws_url) as calm, connect(server.ws_url) as flood:
        await hello(calm)
        await hello(flood)
        ping = orjson.dumps({"type": "ping", "payload": {}}).decode()
        codes, pongs = [], 0
        refused_before = server.dashboard.refused  # the server is the module's
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(2_000):
                await flood.send(ping)
            while True:
                message = await receive(flood)
                pongs += message["type"] == "pong"
                if message["type"] == "error":
                    codes.append(message["payload"]["code"])
        elapsed = time.monotonic() - started
        assert "rate_limited" in codes and codes[-1] == "flood"
        # The server read at most its limit a second, the rest waited in the socket.
        assert pongs <= MAX_MESSAGES_PER_S * (elapsed + 1)
        assert elapsed >= FLOOD_CLOSE_AFTER_S
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        await calm.send(orjson.dumps({"type": "ping", "id": "still", "payload": {}}).decode())
        assert (await receive(calm))["correlation_id"] == "still"
    async with httpx.AsyncClient() as http:
        status = (await http.get(f"http://127.0.0.1:{server.port}/api/v1/status/websocket")).json()
    # One refused a second, then nothing read until the next: of its 2000, the server
    # read ~50 a second and refused one a second, and closed it after 5 such seconds.
    assert FLOOD_CLOSE_AFTER_S <= status["refused_messages"] - refused_before <= elapsed + 1
    assert status["clients"] == 0


async def subscribe(ws: ClientConnection, channel: str) -> None:
    await ws.send(orjson.dumps({"type": "subscribe", "payload": {"channels": [channel]}}).decode())
    assert (await receive(ws))["type"] == "subscribed"
    assert (await receive(ws))["type"] == "backfill"


def stalled_socket(port: int) -> socket.socket:
    """A connected socket with a 4 KB receive buffer, for a client the test never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


@contextlib.asynccontextmanager
async def reader_and_stalled(
    server: Server, channel: str
) -> AsyncIterator[tuple[ClientConnection, ClientConnection]]:
    """Two clients subscribed to ``channel``: one that reads, one that stops reading."""
    async with (
        connect(server.ws_url) as reader,
        connect(server.ws_url, sock=stalled_socket(server.port), max_queue=1) as stalled,
    ):
        for ws in (reader, stalled):
            await hello(ws)
            await subscribe(ws, channel)
        yield reader, stalled


def publisher(server: Server, channel: str, payload: object, per_chunk: int = 100) -> Any:
    """``publish(chunk)``: ``per_chunk`` updates of distinct keys, on the server's loop."""

    def publish(chunk: int) -> None:
        for i in range(per_chunk):  # distinct keys: nothing coalesces for a reader
            server.dashboard.hub.publish(channel, f"agg:{chunk}:{i}", payload)

    return lambda chunk: server.call(publish, chunk)


async def read_updates(reader: ClientConnection, got: int, until: int) -> int:
    """Receive until ``until`` updates in all have come; how many that is."""
    while got < until:
        if (await receive(reader))["type"] == "update":
            got += 1
    return got


async def test_a_client_that_stops_reading_is_shed_within_its_bound_and_told_so(
    server: Server,
) -> None:
    hub = server.dashboard.hub
    payload = {"blob": os.urandom(1_000).hex()}  # 2 KB that compression cannot shrink
    chunks, per_chunk = 40, 100  # 8 MB in all: more than any socket buffer holds
    async with reader_and_stalled(server, "metrics:flood") as (reader, stalled):
        publish = publisher(server, "metrics:flood", payload, per_chunk)
        got = 0
        for chunk in range(chunks):
            publish(chunk)
            got = await read_updates(reader, got, (chunk + 1) * per_chunk)  # chunk by chunk
        behind, ahead = sorted(hub.clients.values(), key=lambda c: c.delivered)
        assert ahead.delivered == chunks * per_chunk and not ahead.buffer.shed
        assert behind.buffer.state is not State.NORMAL and behind.buffer.shed
        assert behind.buffer.size <= hub.per_client_bytes  # 8 MB offered, this much held
        # The stalled client reads again: it is told its state and what was shed.
        told: list[dict[str, Any]] = []
        while not told or told[-1]["state"] != "normal":
            message = await receive(stalled)
            if message["type"] == "backpressure":
                told.append(message["payload"])
        assert told[0]["state"] in ("pressure", "critical", "drop")
        assert told[-1]["shed"]["metrics:flood"] > 0


async def test_rest_health_and_prometheus(server: Server) -> None:
    base = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{base}/healthz")).json() == {"ok": True}
        assert "kestrel_web_clients" in (await http.get(f"{base}/metrics")).text
        assert (await http.get(f"{base}/api/v1/status/system")).json()["rss_mb"] > 0
        assert (await http.get(f"{base}/api/v1/cameras/nope/latest")).status_code == 404
        missing = await http.get(f"{base}/api/v1/metrics/system/aggregates")
        assert missing.status_code == 400 and "field" in missing.json()["error"]
