"""``make bench-requests`` runs end to end, small: both phases, every lane, a cancel.

No timing threshold (the figures are for the README); this checks that the benchmark
measures what it says: camera results in both phases, requests of every lane through
the web server to their end, a clip, a cancel, WebSocket deliveries, the worker's memory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kafka_helpers import run_benchmark

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def test_the_requests_benchmark_runs_every_lane_beside_the_cameras(tmp_path: Path) -> None:
    output = tmp_path / "requests.json"
    args = ["--cameras", "1", "--fps", "2", "--seconds", "6", "--warmup", "2"]
    args += ["--urgent-every-s", "3", "--high-every-s", "3", "--normal-every-s", "3"]
    args += ["--low-per-s", "0.5", "--low-flood", "4", "--cancel-every", "2"]
    args += ["--clip-every-s", "4", "--clip-s", "1"]
    result = run_benchmark("bench.requests", args, output, timeout_s=380)
    assert result["camera_fps_alone"] > 0 and result["camera_fps_with_requests"] > 0
    for lane, figures in result["lanes"].items():
        assert figures["submitted"] >= 1, lane
        assert figures["unfinished"] == 0, (lane, figures)
        assert figures["completed"] + figures["cancelled"] + figures["deadline_missed"] >= 1
    assert result["cancels"] >= 1 and result["ws_events"] > 0
    clips = result["clips"]
    assert clips["submitted"] >= 1 and clips["unfinished"] == 0, clips
    assert clips["completed"] + clips["deadline_missed"] == clips["submitted"]
    assert result["worker_rss_mb_end"] > 0 and len(result["worker_rss_mb_series"]) >= 3
