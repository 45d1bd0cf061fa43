"""The hot cache fed from the real broker by a real stream worker's outputs."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from kestrel.broker import LocalKafka
from kestrel.topics import METRICS_MODEL
from tests.conftest import settings_for
from tests.integration.telemetry_helpers import (
    Row,
    envelope,
    expected_windows,
    produce,
    read_aggregates,
)
from tests.kafka_helpers import FaustWorker
from web.feed import HotCacheFeed
from web.hot_cache import HotCache

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BASE = 1_700_000_100_000  # starts a 5-minute window


@pytest.mark.asyncio
async def test_the_cache_backfills_final_and_running_windows_and_follows_live(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    settings = settings_for(kafka, tmp_path, window_grace_s=1.0, flush_interval_s=0.1)
    src = f"model:t{uuid.uuid4().hex[:8]}"
    rows = [Row(src, BASE + 100 * i, {"tokens_per_second": float(i)}) for i in range(35)]
    topic = METRICS_MODEL.name(settings)
    worker = FaustWorker(settings, tmp_path / "worker.log")
    worker.start()
    feed = None
    try:
        produce(
            settings, topic, [(src.encode(), envelope(rows[i : i + 5])) for i in range(0, 35, 5)]
        )
        # Seconds 0 and 1 close (stream time 3.4 s >= end + 1 s grace); 2 and 3 stay open.
        final = expected_windows(rows[:20], windows=["1s"])
        published = read_aggregates(settings, set(final))

        cache = HotCache(grace_ms=1_000)
        feed = HotCacheFeed(settings, cache)
        await feed.start()

        got = cache.aggregates(src, "tokens_per_second", "1s")
        assert [a.key for a in got] == sorted(published)
        for aggregate in got:
            record = published[aggregate.key]
            assert (aggregate.count, aggregate.sum, aggregate.last) == (
                record["count"],
                record["sum"],
                record["last"],
            )
        # Rows come oldest first: the dict keeps the newest window of each size.
        running = {row["window"]: row for row in cache.running(src, "tokens_per_second")}
        assert (running["1s"]["window_start_ms"], running["1s"]["count"]) == (BASE + 3_000, 5)
        assert (running["10s"]["count"], running["10s"]["sum"]) == (35, float(sum(range(35))))
        assert cache.latest[src]["tokens_per_second"] == (BASE + 3_400, 34.0)

        # Live: a new sample reaches the cache without a restart.
        produce(
            settings,
            topic,
            [(src.encode(), envelope([Row(src, BASE + 3_500, {"tokens_per_second": 99.0})]))],
        )
        async with asyncio.timeout(30), feed.updated:
            await feed.updated.wait_for(
                lambda: cache.latest[src]["tokens_per_second"] == (BASE + 3_500, 99.0)
            )
        running = {row["window"]: row for row in cache.running(src, "tokens_per_second")}
        assert (running["1s"]["count"], running["1s"]["max"]) == (6, 99.0)
        assert feed.skipped == 0
        # A malformed record is skipped and counted (the worker dead-letters it); the
        # feed goes on with the next one.
        good = envelope([Row(src, BASE + 3_600, {"tokens_per_second": 7.0})])
        produce(settings, topic, [(src.encode(), b"{not json"), (src.encode(), good)])
        async with asyncio.timeout(30), feed.updated:
            await feed.updated.wait_for(
                lambda: cache.latest[src]["tokens_per_second"] == (BASE + 3_600, 7.0)
            )
        assert feed.skipped == 1
    finally:
        if feed is not None:
            await feed.stop()
        worker.stop()
