from __future__ import annotations

import orjson

from kestrel.schemas import Alert, WindowAggregate, parse_envelope
from kestrel.schemas.camera import FrameDropped
from web.hot_cache import HotCache


def aggregate(start_ms: int, window: str = "1s", mean: float = 1.0) -> WindowAggregate:
    size = {"1s": 1_000, "10s": 10_000, "5m": 300_000}[window]
    return WindowAggregate(
        source="system",
        field="cpu_percent",
        window=window,  # type: ignore[arg-type]
        window_start_ms=start_ms,
        window_end_ms=start_ms + size,
        count=1,
        sum=mean,
        mean=mean,
        min=mean,
        max=mean,
        last=mean,
        p50=mean,
        p95=mean,
        p99=mean,
    )


def samples(source: str, rows: list[tuple[int, float | None]], name: str = "cpu_percent") -> bytes:
    return orjson.dumps(
        {
            "timestamp": rows[-1][0],
            "source": source,
            "type": "metrics",
            "data": {name: rows[-1][1]},
            "samples": {"timestamp": [t for t, _ in rows], "data": {name: [v for _, v in rows]}},
        }
    )


def test_it_keeps_exactly_the_last_five_minutes_of_final_aggregates() -> None:
    cache = HotCache()
    for second in range(400):
        cache.add_aggregate(aggregate(second * 1_000))
    kept = cache.aggregates("system", "cpu_percent", "1s")
    # The newest window ends at 400 s: those ending after 100 s remain.
    assert [a.window_start_ms for a in kept] == [s * 1_000 for s in range(100, 400)]
    assert len(cache.aggregates("system", "cpu_percent", "1s", since_ms=390_000)) == 10


def test_a_re_emitted_window_replaces_the_first_and_order_holds() -> None:
    cache = HotCache()
    cache.add_aggregate(aggregate(1_000, mean=1.0))
    cache.add_aggregate(aggregate(2_000, mean=2.0))
    cache.add_aggregate(aggregate(1_000, mean=1.0))  # a worker re-emits after a restart
    kept = cache.aggregates("system", "cpu_percent", "1s")
    assert [(a.window_start_ms, a.mean) for a in kept] == [(1_000, 1.0), (2_000, 2.0)]


def test_latest_values_skip_nulls_and_running_windows_read_while_open() -> None:
    cache = HotCache(grace_ms=1_000)
    cache.add_samples(parse_envelope(samples("system", [(10_100, 10.0), (10_200, 30.0)])))
    cache.add_samples(parse_envelope(samples("system", [(10_300, 20.0), (10_400, None)])))
    assert cache.latest["system"] == {"cpu_percent": (10_300, 20.0)}
    running = {row["window"]: row for row in cache.running("system", "cpu_percent")}
    assert set(running) == {"1s", "10s", "5m"}
    one = running["1s"]
    assert (one["window_start_ms"], one["window_end_ms"]) == (10_000, 11_000)
    assert (one["count"], one["sum"], one["min"], one["max"], one["last"]) == (
        3,
        60.0,
        10.0,
        30.0,
        20.0,
    )
    # Stream time passes the 1 s window's end plus grace: it closes and leaves the
    # running view (its final value comes from metrics.aggregates).
    cache.add_samples(parse_envelope(samples("system", [(12_000, 5.0)])))
    starts = {(row["window"], row["window_start_ms"]) for row in cache.running("system")}
    assert ("1s", 10_000) not in starts and ("1s", 12_000) in starts


def test_alerts_active_until_cleared_and_a_bounded_history() -> None:
    cache = HotCache()
    base = {
        "alert_id": "r|ui|frame_time_ms",
        "rule": "r",
        "kind": "temporal",
        "check": "frame_time_ms <= 16.67 always",
        "severity": "warning",
        "source": "ui",
        "field": "frame_time_ms",
        "value": 30.0,
        "window": {"start_ms": 1, "end_ms": 1},
        "evidence": {},
        "raised_at_ms": 1,
        "timestamp": 1,
        "violations": 1,
    }
    cache.add_alert(Alert.model_validate({**base, "state": "active"}))
    assert list(cache.active_alerts) == ["r|ui|frame_time_ms"]
    cache.add_alert(Alert.model_validate({**base, "state": "cleared", "timestamp": 2}))
    assert cache.active_alerts == {}
    for _ in range(300):
        cache.add_alert(Alert.model_validate({**base, "state": "cleared"}))
    assert len(cache.alert_history) == 200


def test_snapshot_is_a_source_s_whole_backfill() -> None:
    cache = HotCache()
    cache.add_aggregate(aggregate(0))
    cache.add_samples(parse_envelope(samples("system", [(500, 7.0)])))
    snap = cache.snapshot("system")
    assert snap["latest"] == {"cpu_percent": {"timestamp": 500, "value": 7.0}}
    assert [a["window_start_ms"] for a in snap["aggregates"]["1s"]["cpu_percent"]] == [0]
    assert {row["window"] for row in snap["running"]} == {"1s", "10s", "5m"}
    assert cache.sources() == ["system"]


def test_dropped_frames_are_counted_per_camera_and_reason() -> None:
    cache = HotCache()
    for reason in ("backpressure", "backpressure", "expired"):
        cache.add_drop(
            FrameDropped(
                camera_id="door",
                message_key="door",
                frame_id="door-1",
                input_stream="kestrel.camera.frames",
                reason=reason,
                capture_ts_ns=1,
                seq=1,
            )
        )
    assert cache.dropped == {"door": {"backpressure": 2, "expired": 1}}
    assert cache.results == {}, "a dropped frame is not a result"


def test_hostile_source_and_field_names_cannot_grow_the_cache_past_its_caps() -> None:
    cache = HotCache(max_sources=3, max_fields=2)
    cache.add_aggregate(aggregate(0))  # source "system"
    for i in range(10):
        cache.add_samples(parse_envelope(samples(f"model:junk{i}", [(1_000 + i, 1.0)])))
    # The three updated last are kept; "system" and its aggregates went with the rest.
    assert sorted(cache.latest) == ["model:junk7", "model:junk8", "model:junk9"]
    assert (
        cache.sources() == sorted(cache.latest) and cache.aggregates("system", "cpu_percent") == []
    )
    for name in ("a", "b", "c", "d"):
        cache.add_samples(parse_envelope(samples("model:junk9", [(2_000, 1.0)], name=name)))
    fields = {"cpu_percent", "a", "b", "c", "d"}
    assert len(cache.latest["model:junk9"]) == 2 and set(cache.latest["model:junk9"]) <= fields
    assert {row["field"] for row in cache.running("model:junk9")} <= set(
        cache.latest["model:junk9"]
    )
    assert cache.refused == 3  # b, c and d left out (cpu_percent and a fit), counted
