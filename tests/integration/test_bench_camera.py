"""``make bench-camera`` runs end to end, small: the limit and the pipeline, both phases.

No timing threshold (the figures are for the README); this checks that the benchmark
measures what it says: frames detected by the plain loop, results through Kafka.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kafka_helpers import run_benchmark

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def test_the_camera_benchmark_measures_both_phases_and_writes_its_json(tmp_path: Path) -> None:
    output = tmp_path / "camera.json"
    args = ["--cameras", "2", "--fps", "5", "--seconds", "6", "--warmup", "2"]
    args += ["--latency-fps", "4", "--latency-cameras", "1", "--broker-warmup-s", "3"]
    result = run_benchmark("bench.camera", args, output, timeout_s=380)
    assert result["limit_fps"] > 0 and result["kestrel_fps"] > 0
    assert result["latency_ms_p50"] > 0 and result["peak_rss_mb"] > 0
    per_process = result["capacity_phase"]["cpu_ms_per_frame"]
    assert set(per_process) >= {"inference worker", "stream worker", "broker"}
    assert all(v > 0 for v in per_process.values()), per_process
    assert result["limit_cpu_ms_per_frame"] > 0
    assert result["total_cpu_ms_per_frame"] == pytest.approx(sum(per_process.values()))
    low = result["latency_phase"]["cpu_ms_per_frame"]
    assert set(low) == set(per_process) and all(v > 0 for v in low.values()), low
    assert result["latency_phase_overhead"]["total_cpu_ms_per_frame"] == pytest.approx(
        sum(low.values())
    )
    assert result["cpu_bound_fps"] > 0
    assert 0 < result["broker_warmup"]["seconds"] < 60
    for phase in ("capacity_phase", "latency_phase"):
        by_thread = result[phase]["thread_cpu_ms_per_frame"]
        assert set(by_thread) == set(per_process)
        broker = by_thread["broker"]
        assert any(group.startswith("data-plane-kafk") for group in broker), broker
        # Thread groups under 2 % are left out; none can hold more than its process.
        assert sum(broker.values()) <= result[phase]["cpu_ms_per_frame"]["broker"] * 1.05
