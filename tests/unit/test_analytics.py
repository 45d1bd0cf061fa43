from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bench.systems import logistic_map
from kestrel.analytics.anomaly import Degradation, Jank, SecondMeans
from kestrel.analytics.config import (
    AnalyticsConfig,
    DegradationRule,
    JankRule,
    PatternRules,
    PatternWatch,
    RegimeRules,
    RulesFileError,
    TemporalRule,
    load_rules,
)
from kestrel.analytics.dtw import REFERENCE_PATTERNS, best_match, dtw_distance
from kestrel.analytics.energy import energy_visual
from kestrel.analytics.engine import AnalyticsEngine
from kestrel.schemas import Alert


def frames(start_ms: int, times: list[float]) -> tuple[list[int], dict[str, list[float | None]]]:
    """UI samples 16 ms apart with these frame times."""
    return [start_ms + 16 * i for i in range(len(times))], {"frame_time_ms": list(times)}


def test_the_default_rules_file_loads_and_every_rule_parses() -> None:
    config = load_rules()
    names = {rule.name for rule in config.rules}
    assert {"frame_budget_breach", "input_lag_warning", "cpu_recovers"} <= names
    assert config.jank[0].name == "sustained_jank"


def test_a_bad_rules_file_names_the_rule_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: x\n    source: ui\n    check: frame_time_ms ~ 3 always\n")
    with pytest.raises(RulesFileError, match=r"rules\.0\.check: .*not a comparison"):
        load_rules(path)
    path.write_text("rules: [\n")
    with pytest.raises(RulesFileError, match="not YAML"):
        load_rules(path)
    with pytest.raises(RulesFileError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")


def test_an_alert_starts_once_and_clears_after_holding_for_a_second() -> None:
    config = AnalyticsConfig(
        rules=[TemporalRule(name="budget", source="ui", check="frame_time_ms <= 16.67 always")]
    )
    active: dict[str, Any] = {}
    engine = AnalyticsEngine(config, active)
    # Three slow frames among fast ones: one alert, not three.
    alerts = engine.observe("ui", *frames(0, [10, 30, 10, 40, 35, 10]))
    assert [(a.state, a.value, a.timestamp) for a in alerts] == [("active", 30.0, 16)]
    assert set(active) == {"budget|ui|frame_time_ms"}
    # Fast frames for less than a second after the last slow one (t=64): still active.
    assert engine.observe("ui", *frames(96, [10] * 60)) == []
    # ... and the first one at least 1 s after it clears the alert, with the whole span.
    cleared = engine.observe("ui", *frames(1_064, [10, 10]))
    assert len(cleared) == 1
    end = cleared[0]
    assert (end.state, end.raised_at_ms, end.timestamp) == ("cleared", 16, 1_064)
    assert (end.window.start_ms, end.window.end_ms) == (16, 1_064)
    assert end.violations == 3
    assert end.evidence["raised_with"]["condition"] == "frame_time_ms <= 16.67"
    assert active == {}


def test_a_restarted_engine_clears_an_alert_raised_before_the_restart() -> None:
    config = AnalyticsConfig(
        rules=[TemporalRule(name="budget", source="ui", check="frame_time_ms <= 16.67 always")]
    )
    active: dict[str, Any] = {}
    AnalyticsEngine(config, active).observe("ui", *frames(0, [40]))
    restarted = AnalyticsEngine(config, active)  # same table, fresh process state
    cleared = restarted.observe("ui", *frames(2_000, [10]))
    assert [(a.alert_id, a.state) for a in cleared] == [("budget|ui|frame_time_ms", "cleared")]
    assert Alert.model_validate(cleared[0].model_dump(mode="json")) == cleared[0]


def test_rules_apply_only_to_the_sources_their_glob_matches() -> None:
    config = AnalyticsConfig(
        rules=[TemporalRule(name="q", source="model:*", check="queue_wait_ms < 100 always")]
    )
    engine = AnalyticsEngine(config, {})
    assert engine.observe("system", [0], {"queue_wait_ms": [500.0]}) == []
    assert [a.source for a in engine.observe("model:a", [0], {"queue_wait_ms": [500.0]})] == [
        "model:a"
    ]


def test_sustained_jank_needs_a_share_of_the_last_second_over_budget() -> None:
    jank = Jank(min_share=0.3, min_frames=10)
    verdicts = [jank.add(16 * i, 30.0 if i % 4 == 3 else 10.0) for i in range(60)]
    assert verdicts[:9] == [None] * 9  # too few frames to judge
    assert all(v is not None and v[0] for v in verdicts[9:])  # 25 % over: fine
    verdicts = [jank.add(1_000 + 16 * i, 30.0 if i % 2 == 0 else 10.0) for i in range(63)]
    last = verdicts[-1]
    assert last is not None and not last[0]  # 50 % over for the whole last second
    assert last[1]["share_over_budget"] == pytest.approx(0.5, abs=0.02)


def test_second_means_finish_a_second_when_the_next_begins() -> None:
    means = SecondMeans()
    assert means.add(1_000, 1.0) is None
    assert means.add(1_500, 3.0) is None
    assert means.add(900, 100.0) is None  # older than the second being filled: left out
    assert means.add(2_000, 5.0) == (1, 2.0)


def test_degradation_is_a_robust_z_score_in_the_bad_direction_only() -> None:
    rng = np.random.default_rng(7)
    degradation = Degradation(worse="higher")
    for value in rng.normal(100.0, 5.0, 60):
        degradation.judge(float(value))
    high = degradation.judge(200.0)
    assert high is not None and not high[0]
    assert high[1]["robust_z"] > 3.5
    low = degradation.judge(0.0)
    assert low is not None and low[0]  # lower is not worse for this field
    # The spike did not move the median: a normal value afterwards is fine.
    normal = degradation.judge(102.0)
    assert normal is not None and normal[0]


def test_degradation_waits_for_30_points_and_handles_a_flat_baseline() -> None:
    degradation = Degradation(worse="either")
    assert all(degradation.judge(50.0) is None for _ in range(30))
    same = degradation.judge(50.0)
    assert same is not None and same[0]
    moved = degradation.judge(60.0)  # MAD is 0; the floor (1 % of 50) makes z = 13.5
    assert moved is not None and not moved[0]
    assert moved[1]["robust_z"] == pytest.approx(0.6745 * 10 / 0.5)


def test_dtw_is_zero_for_the_same_series_and_absorbs_a_shift() -> None:
    a = np.array([0.0, 0.0, 1.0, 2.0, 1.0, 0.0, 0.0])
    b = np.array([0.0, 1.0, 2.0, 1.0, 0.0, 0.0, 0.0])  # the same bump, one step early
    assert dtw_distance(a, a, 1) == 0.0
    assert dtw_distance(a, b, 1) == 0.0  # warping aligns the shift
    assert dtw_distance(a, b, 0) > 0.0  # no warping allowed: it costs


def test_best_match_finds_the_shape_whatever_the_scale() -> None:
    spike = np.full(30, 40.0)
    spike[15] = 95.0
    match, distances = best_match(spike, REFERENCE_PATTERNS, 0.45)
    assert match is not None and match.pattern == "spike"
    assert set(distances) == set(REFERENCE_PATTERNS)
    ramp = np.linspace(10.0, 80.0, 30)
    match, _ = best_match(ramp, REFERENCE_PATTERNS, 0.45)
    assert match is not None and match.pattern == "ramp_up"
    noise = np.random.default_rng(1).normal(20.0, 1.0, 30)
    assert best_match(noise, REFERENCE_PATTERNS, 0.45)[0] is None
    assert best_match(np.full(30, 3.0), REFERENCE_PATTERNS, 0.45) == (None, {})


def test_engine_raises_degradation_and_pattern_alerts_from_second_means() -> None:
    config = AnalyticsConfig(
        degradation=[DegradationRule(source="system", fields={"cpu_percent": "higher"})],
        patterns=PatternRules(
            length=30, watch=[PatternWatch(source="system", fields=["cpu_percent"])]
        ),
    )
    engine = AnalyticsEngine(config, {})
    rng = np.random.default_rng(3)
    alerts = []
    for second in range(60):  # 10 Hz, noisy around 20 %, one bad second at 45
        level = 95.0 if second == 45 else 20.0
        t = [second * 1000 + 100 * i for i in range(10)]
        values: list[float | None] = [float(v) for v in rng.normal(level, 1.0, 10)]
        alerts += engine.observe("system", t, {"cpu_percent": values})
    started = [(a.rule, a.state) for a in alerts if a.state == "active"]
    assert ("degradation", "active") in started
    assert ("pattern:spike", "active") in started
    degradation = next(a for a in alerts if a.rule == "degradation")
    assert degradation.window.end_ms - degradation.window.start_ms == 1000
    assert degradation.window.start_ms == 45_000
    assert degradation.evidence["robust_z"] > 3.5
    assert ("degradation", "cleared") in [(a.rule, a.state) for a in alerts]


def test_energy_mapping_follows_the_digest_and_stays_in_0_to_1() -> None:
    visual = energy_visual(
        {
            "tokens_per_second": 50.0,
            "entropy_bits": 7.5,
            "energy_normalized": None,
            "gpu_utilization": 80.0,
        }
    )
    assert visual.ribbon_width == pytest.approx(0.5)  # 50 / baseline 100
    assert visual.particle_density == pytest.approx(0.5)  # 7.5 / 15 bits
    assert visual.animation_speed == pytest.approx(50 * 0.5 / 200)  # velocity / max velocity
    assert visual.lightning_intensity == pytest.approx(0.8)  # no energy_normalized: GPU
    saturated = energy_visual(
        {"tokens_per_second": 1e6, "entropy_bits": 99.0, "energy_normalized": 3.0}
    )
    assert saturated.model_dump() == {
        "ribbon_width": 1.0,
        "particle_density": 1.0,
        "animation_speed": 1.0,
        "lightning_intensity": 1.0,
    }
    assert energy_visual({}).model_dump() == dict.fromkeys(saturated.model_dump(), 0.0)


def test_a_late_response_ends_its_alert_as_soon_as_it_comes() -> None:
    rule = "cpu_percent > 90 is followed by cpu_percent < 70 within 5 s"
    config = AnalyticsConfig(rules=[TemporalRule(name="cpu", source="system", check=rule)])
    engine = AnalyticsEngine(config, {})
    cpu = [95.0] + [85.0] * 55 + [60.0]
    alerts = engine.observe("system", [100 * i for i in range(len(cpu))], {"cpu_percent": cpu})
    assert [(a.state, a.timestamp, a.value) for a in alerts] == [
        ("active", 5_100, 85.0),
        ("cleared", 5_600, 60.0),
    ]
    assert alerts[1].violations == 5  # 5100 ... 5500


# --- A restart anywhere decides exactly as no restart ------------------------------------

FULL_RULES = AnalyticsConfig(
    rules=[
        TemporalRule(name="budget", source="system", check="cpu_percent <= 90 always"),
        TemporalRule(
            name="recovers",
            source="system",
            check="cpu_percent > 90 is followed by cpu_percent < 70 within 2 s",
        ),
        TemporalRule(name="alive", source="system", check="eventually cpu_percent > 5 within 3 s"),
        TemporalRule(
            name="bounded", source="system", check="cpu_percent < 95 until cpu_percent < 10"
        ),
    ],
    jank=[JankRule(source="system", field="cpu_percent", budget_ms=50.0)],
    degradation=[DegradationRule(source="system", fields={"cpu_percent": "higher"})],
    patterns=PatternRules(length=8, watch=[PatternWatch(source="system", fields=["cpu_percent"])]),
    regimes=RegimeRules(
        window=40,
        every_s=5,
        confirm=1,
        settle_s=10,
        watch=[PatternWatch(source="system", fields=["cpu_percent"])],
    ),
)


def alert_keys(alerts: list[Alert]) -> list[tuple[str, str, int]]:
    return [(a.alert_id, a.state, a.timestamp) for a in alerts]


# Stretches of a few levels, so that deadlines are pending, baselines full and patterns
# matched when the cut comes: uniform noise would settle every rule at once.
stretches = st.lists(
    st.tuples(st.sampled_from([3.0, 50.0, 80.0, 92.0, 97.0]), st.integers(1, 40)),
    min_size=4,
    max_size=30,
)


@settings(max_examples=80, deadline=None)
@given(stretches, st.floats(min_value=0.0, max_value=1.0))
# A full 5-minute-style baseline, then a spike, cut inside it: the degradation alert
# raised before the cut must clear after it, which only the restored baseline can judge.
@example([(50.0, 400), (97.0, 50), (50.0, 100)], 0.8)
# A flat minute, then an 8 s square wave: the regime changes (fixed point -> periodic)
# before the cut and its alert must clear after it, from the restored regime state.
@example([(50.0, 600), *[(3.0, 40), (97.0, 40)] * 8], 0.75)
def test_an_engine_restored_from_its_dump_at_any_point_raises_the_same_alerts(
    levels: list[tuple[float, int]], where: float
) -> None:
    cpu = [level + 0.5 * (i % 3) for level, n in levels for i in range(n)]
    cut = round(where * len(cpu))
    t = [i * 100 for i in range(len(cpu))]  # 10 Hz
    rows = [([ts], {"cpu_percent": [v]}) for ts, v in zip(t, cpu, strict=True)]
    whole = AnalyticsEngine(FULL_RULES, {})
    expected = [a for ts, data in rows for a in whole.observe("system", ts, data)]

    first = AnalyticsEngine(FULL_RULES, {})
    got = [a for ts, data in rows[:cut] for a in first.observe("system", ts, data)]
    dumped = orjson.loads(orjson.dumps(first.dump("system"), option=orjson.OPT_NON_STR_KEYS))
    second = AnalyticsEngine(FULL_RULES, {})  # a new worker: nothing but the changelog
    if cut:
        second.load("system", dumped)
    got += [a for ts, data in rows[cut:] for a in second.observe("system", ts, data)]
    assert alert_keys(got) == alert_keys(expected)
    analyses = first.take_analyses() + second.take_analyses()
    assert analyses == whole.take_analyses()  # regimes and matches, to the last figure


def test_a_frame_time_that_turns_chaotic_raises_a_regime_change_then_clears() -> None:
    rules = AnalyticsConfig(
        regimes=RegimeRules(
            window=60,
            every_s=5,
            confirm=3,
            settle_s=20,
            watch=[PatternWatch(source="ui", fields=["frame_time_ms"])],
        )
    )
    rng = np.random.default_rng(0)
    steady = [16.0 + rng.normal(0, 0.5) for _ in range(90)]
    chaos = [10 + 20 * v for v in logistic_map(150, x0=0.1)]
    engine = AnalyticsEngine(rules, {})
    alerts = []
    for s, value in enumerate([*steady, *chaos]):
        stamps = [1000 * s + 100 * i for i in range(10)]
        alerts += engine.observe("ui", stamps, {"frame_time_ms": [value] * 10})
    regime = [a for a in alerts if a.kind == "regime"]
    assert [a.state for a in regime] == ["active", "cleared"]
    raised = regime[0]
    assert (raised.evidence["before"], raised.evidence["after"]) == ("fixed_point", "chaotic")
    assert raised.evidence["lyapunov_per_s"] > 0.2
    assert raised.timestamp > 90_000 and regime[1].timestamp - raised.timestamp >= 20_000
    (analysis, *_) = engine.take_analyses()[-1:]
    assert analysis.regime is not None and analysis.regime.kind == "chaotic"
