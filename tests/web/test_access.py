"""One access model (web/access.py), against the real server with real clients."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.web.test_protocol import Server, hello, receive, subscribe, without_kafka
from web.access import COOKIE

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

TOKEN = "a-long-random-secret"
REST = [
    "/",
    "/static/app.js",
    "/metrics",
    "/api/v1/status/system",
    "/api/v1/status/streaming",
    "/api/v1/status/websocket",
    "/api/v1/cameras",
    "/api/v1/cameras/c1/latest",
    "/api/v1/cameras/c1/frame.jpg",
    "/api/v1/frames/f1.jpg",
    "/api/v1/metrics/system/aggregates?field=cpu_percent",
    "/api/v1/stream?channels=alerts",
]


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Server]:
    running = Server(
        without_kafka(tmp_path, web_token=TOKEN, web_origins="https://ops.example.com")
    )
    running.start()
    yield running
    running.stop()


def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


async def test_every_route_but_healthz_needs_the_token(secured: Server) -> None:
    async with httpx.AsyncClient(base_url=base(secured), timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        for path in REST:
            refused = await http.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"] == "Bearer"
            wrong = await http.get(path, headers={"Authorization": "Bearer guess"})
            assert wrong.status_code == 401, path
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for path in REST:
            if path.startswith("/api/v1/stream"):
                continue  # a stream: checked below
            answer = await http.get(path, headers=bearer)
            # Through the gate: the route's own answer (404: nothing cached yet).
            assert answer.status_code in (200, 404), path
            assert answer.status_code != 404 or "error" in answer.json(), path


async def test_sse_takes_the_token_as_a_query_parameter(secured: Server) -> None:
    url = f"/api/v1/stream?channels=alerts&token={TOKEN}"
    async with (
        httpx.AsyncClient(base_url=base(secured), timeout=10) as http,
        http.stream("GET", url) as sse,
    ):
        assert sse.status_code == 200
        first = await asyncio.wait_for(anext(sse.aiter_lines()), 10)
        assert orjson.loads(first.removeprefix("data: "))["type"] == "backfill"


async def test_a_browser_trades_the_token_for_a_strict_http_only_cookie(secured: Server) -> None:
    async with httpx.AsyncClient(base_url=base(secured), timeout=10) as http:
        login = await http.get(f"/?token={TOKEN}")
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"]
        assert f"{COOKIE}={TOKEN}" in cookie and "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        # The client keeps the cookie: the page, then the WebSocket handshake, need no more.
        assert (await http.get("/")).status_code == 200
        assert (await http.get("/api/v1/cameras")).status_code == 200
        assert (await http.get("/?token=guess")).status_code == 401
    headers = {"Cookie": f"{COOKIE}={TOKEN}"}
    async with connect(secured.ws_url, additional_headers=headers) as ws:
        assert (await hello(ws))["type"] == "welcome"


async def test_a_websocket_without_the_token_is_refused(secured: Server) -> None:
    async with connect(secured.ws_url) as ws:
        error = await hello(ws, token="guess")
        assert (error["type"], error["payload"]["code"]) == ("error", "unauthorized")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    async with connect(secured.ws_url) as ws:
        assert (await hello(ws, token=TOKEN))["type"] == "welcome"


async def test_pages_of_other_origins_are_refused_even_with_the_token(secured: Server) -> None:
    """Cross-site WebSocket hijacking: the browser sends the victim's cookie along."""
    cookie = {"Cookie": f"{COOKIE}={TOKEN}"}
    evil = "https://evil.example"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(secured.ws_url, origin=evil, additional_headers=cookie):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    for origin in ("https://ops.example.com", f"http://127.0.0.1:{secured.port}"):
        async with connect(secured.ws_url, origin=origin, additional_headers=cookie) as ws:  # type: ignore[arg-type]
            assert (await hello(ws))["type"] == "welcome"
    async with httpx.AsyncClient(base_url=base(secured), timeout=10) as http:
        sse = f"/api/v1/stream?channels=alerts&token={TOKEN}"
        answer = await http.get(sse, headers={"Origin": "https://evil.example"})
        assert answer.status_code == 403


async def test_ux_reports_only_from_authenticated_pages_and_on_the_server_s_clock(
    tmp_path: Path,
) -> None:
    future = int(time.time() * 1000) + 3_600_000  # an hour ahead
    report = {"timestamp": [future], "data": {"frame_time_ms": [30.0]}}
    ux = orjson.dumps({"type": "ux", "id": "u", "payload": report}).decode()
    ping = orjson.dumps({"type": "ping", "id": "after", "payload": {}}).decode()
    # Served to anyone (the operator opted in) without a token: nobody is authenticated.
    opened = Server(without_kafka(tmp_path / "open", web_allow_open=True))
    opened.start()
    try:
        async with connect(opened.ws_url) as ws:
            await hello(ws)
            await ws.send(ux)
            error = await receive(ws)
            assert (error["payload"]["code"], error["correlation_id"]) == ("unauthorized", "u")
        assert opened.dashboard.ux.received == 0
    finally:
        opened.stop()
    secured = Server(without_kafka(tmp_path / "secured", web_token=TOKEN))
    secured.start()
    try:
        async with connect(secured.ws_url) as ws:
            await hello(ws, token=TOKEN)
            await ws.send(ux)
            await ws.send(ping)  # answered after the ux report was handled
            assert (await receive(ws))["correlation_id"] == "after"
        merger = secured.dashboard.ux
        assert merger.received == 1
        now_slot = int(time.time() * 1000) * 60 // 1000
        assert merger.slots and max(merger.slots) <= now_slot
    finally:
        secured.stop()


async def test_the_server_refuses_to_listen_beyond_loopback_without_a_token(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "KESTREL_WEB_HOST": "0.0.0.0",
        "KESTREL_DATA_DIR": str(tmp_path),
        "KESTREL_WEB_TOKEN": "",
    }
    env.pop("KESTREL_WEB_TOKEN")
    command = [sys.executable, "-m", "web"]
    ran = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 2
    assert "KESTREL_WEB_TOKEN is unset" in ran.stderr and "KESTREL_WEB_ALLOW_OPEN" in ran.stderr


async def test_repeated_subscribes_cost_one_backfill(secured: Server) -> None:
    async with connect(secured.ws_url) as ws:
        await hello(ws, token=TOKEN)
        await subscribe(ws, "alerts")
        again = orjson.dumps({"type": "subscribe", "payload": {"channels": ["alerts"]}}).decode()
        for _ in range(20):
            await ws.send(again)
        await ws.send(orjson.dumps({"type": "ping", "id": "end", "payload": {}}).decode())
        kinds = []
        while (message := await receive(ws)).get("correlation_id") != "end":
            kinds.append(message["type"])
        assert kinds == ["subscribed"] * 20
