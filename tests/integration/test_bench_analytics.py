"""``make bench-analytics`` runs end to end, small: validation, DTW, step costs, worker.

No timing threshold: the figures are for the README; this checks that each part runs
and reports what it says, the analytics worker on the real broker included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kafka_helpers import run_benchmark

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def test_the_analytics_benchmark_validates_times_and_drains_a_backlog(tmp_path: Path) -> None:
    output = tmp_path / "analytics.json"
    # 320 s of event time: the regimes' 300 s window fills, so every step runs.
    args = ["--sources", "8", "--seconds", "320", "--repeat", "5"]
    result = run_benchmark("bench.analytics", args, output, timeout_s=380)
    systems = {row["system"]: row for row in result["validation"]}
    assert len(systems) == 10 and all("got" in row for row in systems.values())
    assert all(row["max_abs_difference"] == 0.0 for row in result["dtw"])  # equal results
    for key in ("match_dtw_us", "match_lcs_us", "match_edit_us", "regime_us"):
        assert result["step_costs"][key] > 0, key
    worker = result["worker"]
    assert worker["metrics"] == 8 * 320 * 60 * 9 and worker["metrics_per_s"] > 0
    assert worker["analyses_with_a_regime"] > 0  # the regime step ran in the worker
    assert set(result["repeatability_50_seeds"]) == {
        "noise -> fixed_point",
        "random walk -> drifting",
        "sine, period 5-70 -> periodic",
    }
