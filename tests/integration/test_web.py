"""The dashboard server fed by the real broker: WebSocket and SSE clients see updates."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from kestrel.broker import LocalKafka
from kestrel.topics import METRICS_MODEL
from tests.conftest import settings_for
from tests.integration.telemetry_helpers import Row, envelope, produce
from tests.web.test_protocol import Server, hello, receive
from web.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(120)]


async def test_live_samples_reach_websocket_and_sse_subscribers(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    settings = settings_for(kafka, tmp_path)
    server = Server(create_app(settings, follow_kafka=True))
    server.start()
    source = f"model:t{uuid.uuid4().hex[:8]}"
    channel = f"metrics:{source}"
    topic = METRICS_MODEL.name(settings)
    try:
        async with connect(server.ws_url) as ws, httpx.AsyncClient(timeout=30) as http:
            await hello(ws)
            await ws.send(
                orjson.dumps({"type": "subscribe", "payload": {"channels": [channel]}}).decode()
            )
            assert (await receive(ws))["type"] == "subscribed"
            assert (await receive(ws))["type"] == "backfill"
            url = f"http://127.0.0.1:{server.port}/api/v1/stream?channels={channel}"
            async with http.stream("GET", url) as sse:
                lines = sse.aiter_lines()
                first = await asyncio.wait_for(anext(lines), 10)
                assert orjson.loads(first.removeprefix("data: "))["type"] == "backfill"
                now = (time.time_ns() // 1_000_000_000) * 1_000  # within the retention
                produce(
                    settings,
                    topic,
                    [(source.encode(), envelope([Row(source, now, {"ttft_ms": 180.0})]))],
                )
                update = await receive(ws)
                assert (update["type"], update["channel"], update["key"]) == (
                    "update",
                    channel,
                    "latest",
                )
                assert update["payload"]["latest"]["ttft_ms"] == {"timestamp": now, "value": 180.0}
                while True:  # skip blank separators and keep-alives
                    line = await asyncio.wait_for(anext(lines), 10)
                    if line.startswith("data: "):
                        break
                event = orjson.loads(line.removeprefix("data: "))
                assert (event["type"], event["channel"]) == ("update", channel)
                assert event["payload"]["latest"]["ttft_ms"]["value"] == 180.0
    finally:
        server.stop()


async def test_healthz_turns_unhealthy_when_the_feed_stops_following_kafka(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    settings = settings_for(kafka, tmp_path)
    server = Server(create_app(settings, follow_kafka=True))
    server.start()
    url = f"http://127.0.0.1:{server.port}/healthz"
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(url)).json() == {"ok": True, "caught_up": True}
            feed = server.dashboard.feed
            assert feed is not None and feed._consumer is not None
            # The consumer goes away under the feed, as when it hits an error it cannot
            # get past: the page would freeze, and the probe must say so.
            loop = server.dashboard.loop
            task = feed._task
            assert loop is not None and task is not None

            async def stop_under_it() -> None:
                assert feed._consumer is not None
                await feed._consumer.stop()
                await asyncio.wait([task], timeout=30)  # the feed notices and ends

            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(stop_under_it(), loop))
            response = await http.get(url)
            assert response.status_code == 503
            assert response.json()["ok"] is False and response.json()["feed"]
    finally:
        server.stop()
