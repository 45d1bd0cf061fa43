from __future__ import annotations

import pytest

from kestrel.analytics.temporal import RuleError, Verdict, parse_rule


def run(rule: str, rows: list[tuple[int, dict[str, float | None]]]) -> list[Verdict | None]:
    monitor = parse_rule(rule).monitor()
    return [monitor.step(t, row) for t, row in rows]


def oks(verdicts: list[Verdict | None]) -> list[bool | None]:
    return [None if v is None else v.ok for v in verdicts]


def test_always_judges_every_sample_and_skips_unknown_values() -> None:
    verdicts = run(
        "frame_time_ms <= 16.67 always",
        [
            (0, {"frame_time_ms": 10.0}),
            (16, {"frame_time_ms": 20.0}),
            (33, {"frame_time_ms": None}),
        ],
    )
    assert oks(verdicts) == [True, False, None]
    assert verdicts[1] is not None and verdicts[1].value == 20.0
    assert verdicts[1].evidence["condition"] == "frame_time_ms <= 16.67"


def test_always_prefix_form_and_conjunctions() -> None:
    verdicts = run(
        "always cpu_percent < 95 and memory_percent < 90",
        [
            (0, {"cpu_percent": 50.0, "memory_percent": 50.0}),
            (100, {"cpu_percent": 50.0, "memory_percent": 95.0}),
        ],
    )
    assert oks(verdicts) == [True, False]


def test_followed_by_within_is_violated_only_past_the_deadline() -> None:
    rule = "cpu_percent > 90 is followed by cpu_percent < 70 within 5 s"
    rows: list[tuple[int, dict[str, float | None]]] = [
        (0, {"cpu_percent": 95.0}),  # trigger
        (4_000, {"cpu_percent": 85.0}),  # not yet late
        (5_000, {"cpu_percent": 85.0}),  # exactly at the deadline: still in time
        (5_001, {"cpu_percent": 85.0}),  # late: violated
        (6_000, {"cpu_percent": 60.0}),  # the response comes: holds again
        (7_000, {"cpu_percent": 80.0}),  # nothing pending
    ]
    verdicts = run(rule, rows)
    assert oks(verdicts) == [None, None, None, False, True, None]
    late = verdicts[3]
    assert late is not None
    assert late.evidence["triggered_at_ms"] == 0
    assert late.evidence["deadline_ms"] == 5_000
    assert late.evidence["trigger_value"] == 95.0


def test_followed_by_in_time_holds() -> None:
    verdicts = run(
        "cpu_percent > 90 is followed by cpu_percent < 70 within 5 s",
        [(0, {"cpu_percent": 95.0}), (3_000, {"cpu_percent": 65.0})],
    )
    assert oks(verdicts) == [None, True]


def test_eventually_within_counts_from_the_last_time_it_held() -> None:
    verdicts = run(
        "eventually tokens_per_second > 0 within 30 s",
        [
            (0, {"tokens_per_second": 0.0}),  # starts the clock
            (30_000, {"tokens_per_second": 0.0}),  # 30 s: still allowed
            (30_001, {"tokens_per_second": 0.0}),  # past it
            (31_000, {"tokens_per_second": 5.0}),  # holds
            (40_000, {"tokens_per_second": 0.0}),
        ],
    )
    assert oks(verdicts) == [None, None, False, True, None]


def test_until_requires_the_hold_until_the_release() -> None:
    verdicts = run(
        "queue_wait_ms < 1000 until batch_size == 0",
        [
            (0, {"queue_wait_ms": 5000.0, "batch_size": 4.0}),  # not armed yet
            (100, {"queue_wait_ms": 10.0, "batch_size": 4.0}),  # armed
            (200, {"queue_wait_ms": 20.0, "batch_size": 4.0}),  # holds
            (300, {"queue_wait_ms": 2000.0, "batch_size": 4.0}),  # broke before release
            (400, {"queue_wait_ms": 2000.0, "batch_size": 0.0}),  # released
            (500, {"queue_wait_ms": 2000.0, "batch_size": 4.0}),  # disarmed: nothing to say
        ],
    )
    assert oks(verdicts) == [None, None, True, False, True, None]


def test_until_within_is_violated_when_the_release_is_late() -> None:
    verdicts = run(
        "gpu_utilization > 10 until tokens_per_second == 0 within 2 s",
        [
            (0, {"gpu_utilization": 50.0, "tokens_per_second": 30.0}),
            (2_500, {"gpu_utilization": 50.0, "tokens_per_second": 30.0}),
        ],
    )
    assert oks(verdicts) == [None, False]
    assert verdicts[1] is not None and verdicts[1].evidence["deadline_ms"] == 2_000


@pytest.mark.parametrize(
    "text",
    ["cpu_percent >> 90 always", "cpu_percent > 90 is followed by cpu < 5", "sometimes x > 1", ""],
)
def test_bad_rules_say_what_the_grammar_is(text: str) -> None:
    with pytest.raises(RuleError, match=r"COND|comparison"):
        parse_rule(text)
