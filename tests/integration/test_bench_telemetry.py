"""``make bench-telemetry`` runs end to end, small: Kestrel, the limit, Quix Streams, Faust.

No timing threshold (the figures are for the README, from a full run on a quiet
machine); this checks that every consumer of the benchmark runs and is measured, the
Quix Streams baseline in its own virtualenv included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.telemetry import QUIX_VARIANTS
from tests.kafka_helpers import run_benchmark

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_the_telemetry_benchmark_measures_every_consumer_and_writes_its_json(
    tmp_path: Path,
) -> None:
    output = tmp_path / "telemetry.json"
    args = ["--sources", "20", "--seconds", "80", "--partitions", "2"]
    args += ["--latency-sources", "2", "--latency-seconds", "15"]
    # Timed from 10 % to 100 % of the input committed, which must take a few commits:
    # offsets advance once a flush (1 s by default), so a small run flushes (and commits)
    # more often. 16,000 messages take Kestrel about 2 s here, ten of these commits.
    args += ["--flush-interval-s", "0.2"]
    # The row-per-sample Quix forms drain about 60 messages/s: time them over fewer.
    args += ["--row-form-messages", "3000"]
    result = run_benchmark("bench.telemetry", args, output, timeout_s=880)
    # Every key has a value (run_benchmark), baselines included: one that breaks fails.
    for key in ("raw", "kestrel", "quix", "faust", "faust_empty_agent"):
        assert result[f"{key}_samples_per_s"] > 0, key
    assert set(result["quix_variants"]) == set(QUIX_VARIANTS)
    for variant in result["quix_variants"].values():
        assert variant["samples_per_s"] > 0 and variant["peak_rss_mb"] > 0
    assert result["best_peer"] in {"plain faust", *(f"quix ({v})" for v in QUIX_VARIANTS)}
    assert set(result["consumers"]) == {"raw", "kestrel", "quix", "faust"}
    for key in ("faust", "faust_empty_agent"):
        assert result[f"{key}_peak_rss_mb"] > 0, key
    assert result["latency_ms_p50"] > 0 and result["peak_rss_mb"] > 0
