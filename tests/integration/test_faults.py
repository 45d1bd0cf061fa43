"""One run of each case of the fault matrix (``make faults`` runs them many times).

Each case runs the whole pipeline as users run it, puts its fault in the middle of the
stream, and compares every output with what it must be: see ``bench/faults.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults import CASES, run_case
from kestrel.broker import LocalKafka

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


@pytest.mark.parametrize("case", list(CASES))
def test_nothing_is_lost_or_doubled_and_no_worker_dies(
    case: str, kafka: LocalKafka, tmp_path: Path
) -> None:
    outcome = run_case(case, kafka, tmp_path / case)
    assert outcome.ok, "\n".join(outcome.problems) + f"\n(logs in {outcome.workdir})"
