"""``make bench-restore`` runs end to end, small: restores are measured and read back.

No timing threshold: the figures are for the README; this checks that the benchmark
measures what it says (a restore reads the compacted changelog, not all of it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kafka_helpers import run_benchmark

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_the_restore_benchmark_restarts_the_worker_and_reports_what_it_read(
    tmp_path: Path,
) -> None:
    output = tmp_path / "restore.json"
    args = ["--sources", "5", "--partitions", "2", "--checkpoints", "0.2", "0.6"]
    result = run_benchmark("bench.restore", args, output, timeout_s=280)
    first, second = result["checkpoints"]
    assert first["records_read"] > 0 and first["restore_s_max"] > 0
    # More was written by the second checkpoint than a restore reads: the live keys
    # (five sources in two partitions, their markers) and the uncompacted tail.
    assert second["changelog_records_written"] > first["changelog_records_written"]
