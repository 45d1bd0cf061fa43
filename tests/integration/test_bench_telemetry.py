"""``make bench-telemetry`` runs end to end, small: Kestrel, the limit and Quix Streams.

No timing threshold (the figures are for the README, from a full run on a quiet
machine); this checks that every consumer of the benchmark runs and is measured, the
Quix Streams baseline in its own virtualenv included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kafka_helpers import run_benchmark

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_the_telemetry_benchmark_measures_every_consumer_and_writes_its_json(
    tmp_path: Path,
) -> None:
    output = tmp_path / "telemetry.json"
    args = ["--sources", "20", "--seconds", "40", "--partitions", "2"]
    args += ["--latency-sources", "2", "--latency-seconds", "15"]
    # Timed from 10 % to 100 % of the input committed, which must take a few commits:
    # offsets advance once a flush (1 s by default), so a small run flushes more often.
    args += ["--flush-interval-s", "0.2"]
    result = run_benchmark("bench.telemetry", args, output, timeout_s=580)
    for key in ("raw_samples_per_s", "kestrel_samples_per_s", "quix_samples_per_s"):
        assert result[key] > 0, key
    assert set(result["quix_variants"]) == {"agg", "one-aggregator"}
    assert result["latency_ms_p50"] is not None and result["peak_rss_mb"] > 0
