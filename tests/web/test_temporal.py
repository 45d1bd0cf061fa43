"""Each watched field's temporal analysis over REST and the WebSocket's analytics channel."""

from __future__ import annotations

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from kestrel.schemas.temporal import TemporalAnalysis
from tests.web.test_protocol import Server, hello, receive

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def analysis(kind: str, timestamp: int, period: float | None = None) -> TemporalAnalysis:
    return TemporalAnalysis.model_validate(
        {
            "source": "model:llm",
            "field": "tokens_per_second",
            "timestamp": timestamp,
            "window_s": 300,
            "regime": {
                "kind": kind,
                "period_s": period,
                "lyapunov_per_s": None,
                "lag_s": 2,
                "dimension": 2,
                "determinism": 0.9,
                "drift": 0.1,
            },
            "regime_since_ms": timestamp,
            "matches": [],
            "last_matches": [
                {"pattern": "sawtooth", "measure": "dtw", "distance": 0.3, "threshold": 0.45}
            ],
            "last_matched_ms": timestamp - 5_000,
        }
    )


async def test_rest_lists_each_field_and_answers_one(server: Server) -> None:
    server.call(server.dashboard.cache.add_temporal, analysis("periodic", 10_000, 8.0))
    base = f"http://127.0.0.1:{server.port}/api/v1/analytics/temporal"
    async with httpx.AsyncClient() as http:
        (row,) = (await http.get(base)).json()
        assert row["regime"]["kind"] == "periodic" and row["regime"]["period_s"] == 8.0
        assert (await http.get(base, params={"source": "model:other"})).json() == []
        one = await http.get(f"{base}/model:llm/tokens_per_second")
        assert one.json()["last_matches"][0]["measure"] == "dtw"
        assert (await http.get(f"{base}/model:llm/nothing")).status_code == 404


async def test_the_analytics_channel_backfills_then_updates_by_field(server: Server) -> None:
    cache = server.dashboard.cache
    server.call(cache.add_temporal, analysis("fixed_point", 10_000))
    async with connect(server.ws_url) as ws:
        await hello(ws)
        await ws.send(
            orjson.dumps({"type": "subscribe", "payload": {"channels": ["analytics"]}}).decode()
        )
        assert (await receive(ws))["type"] == "subscribed"
        backfill = await receive(ws)
        key = "model:llm|tokens_per_second"
        assert backfill["payload"][key]["regime"]["kind"] == "fixed_point"
        server.call(cache.add_temporal, analysis("periodic", 20_000, 8.0))
        update = await receive(ws)
        assert (update["channel"], update["key"]) == ("analytics", key)
        assert update["payload"]["regime"]["kind"] == "periodic"
        server.call(cache.add_temporal, analysis("chaotic", 15_000))  # older: not news
        regime = cache.temporal[key].regime
        assert regime is not None and regime.kind == "periodic"
