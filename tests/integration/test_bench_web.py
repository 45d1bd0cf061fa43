"""``make bench-web`` runs end to end, small: its own broker, the server, clients, JSON.

Nothing here is a timing threshold (the benchmark's numbers are for the README, on a
quiet machine); this checks that the benchmark measures what it says it does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kafka_helpers import run_benchmark

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_the_web_benchmark_measures_every_phase_and_writes_its_json(tmp_path: Path) -> None:
    output = tmp_path / "web.json"
    args = ["--clients", "5", "--rounds", "1", "--seconds", "2", "--warmup", "1"]
    args += ["--hostile", "3"]
    result = run_benchmark("bench.web", args, output, timeout_s=200)
    for key in ("latency_ms_p50", "latency_ms_p99", "latency_ms_p99_with_slow_client"):
        assert result[key] > 0, key
    assert result["clients"] == 5 and result["server_rss_mb"] > 0
    assert result["rate_hz_min"] > 0  # every client got the 60 Hz source's updates
    assert set(result["phases"]) == {"one", "all", "all_with_slow", "all_with_hostile"}
    assert [p["clients"] for p in result["phases"].values()] == [1, 5, 5, 5]
    for phase in result["phases"].values():
        for channel in phase["channels"].values():
            assert channel["updates"] > 0 and channel["rate_hz_min"] > 0
    (slow,) = result["slow_client"]
    assert slow["received"] > 0 and slow["server_view"]["clients"] == 6
    (hostile,) = result["hostile"]
    # Each kind of hostile client ran, and the server answered the flood and bad frames.
    assert hostile["stalled_connected"] >= 3 and hostile["storm_visits"] > 0
    assert hostile["flood_sent"] > 0 and hostile.get("flood_error_rate_limited", 0) > 0
    assert hostile["bad_sent"] > 0 and hostile.get("bad_error_bad_json", 0) > 0
    for key in ("latency_ms_p99_with_hostile", "hostile_p99_change", "hostile_rate_change"):
        assert key in result, key
