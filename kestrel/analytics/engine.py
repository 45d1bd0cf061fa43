"""The analytics engine: a source's samples in, alert starts and ends out.

Pure logic, no Kafka: the analytics agent feeds it every collector message and
publishes what it returns. Per source it runs the temporal rules on every sample, the
jank detector on every frame, and, on every finished second of event time, the
degradation check and the pattern matcher (DTW, LCS and edit distance) on that
second's mean; every ``regimes.every_s`` seconds it reads each watched field's regime
(:mod:`kestrel.analytics.attractor`) and emits the field's temporal analysis
(:meth:`AnalyticsEngine.take_analyses`). A regime that changes, and holds for
``regimes.confirm`` analyses, raises a ``regime_change`` alert that clears once the new
regime has held ``regimes.settle_s``.

Each check gives a verdict per sample (or second); an :class:`AlertTracker` turns
verdicts into alerts: the first violation starts the alert, and holding again for the
rule's ``clear_after_s`` (1 s by default, event time) ends it, so a flickering
condition is one alert, not one per frame. A verdict that settles an obligation (the
response of "followed by" came, the release of "until") ends it at once. Active
alerts live in a mapping the caller provides. Everything a source's checks remember
(pending deadlines, baselines, recent means, jank frames, active alerts) comes out of
:meth:`AnalyticsEngine.dump` and goes back with :meth:`AnalyticsEngine.load`, so the
analytics worker persists it with the state protocol and a restart or a rebalance
decides exactly as an uninterrupted worker would.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from kestrel.analytics.anomaly import Degradation, Jank, SecondMeans
from kestrel.analytics.config import AnalyticsConfig, PatternRules
from kestrel.analytics.patterns import match_all
from kestrel.analytics.regimes import RegimeState, analysis
from kestrel.analytics.temporal import Monitor, Verdict
from kestrel.schemas.alerts import Alert, AlertWindow
from kestrel.schemas.temporal import TemporalAnalysis

Kind = Literal["temporal", "anomaly", "pattern", "regime"]


@dataclass(frozen=True)
class Check:
    """What an alert is about: its rule, kind, text and severity."""

    rule: str
    kind: Kind
    text: str
    severity: Literal["info", "warning", "critical"]
    clear_after_ms: int


class AlertTracker:
    """Starts and ends alerts from verdicts; ``active`` holds the running ones as dicts."""

    def __init__(self, active: MutableMapping[str, Any]) -> None:
        self.active = active
        self._last_bad: dict[str, tuple[int, int]] = {}  # alert_id -> (time, violations)

    def update(
        self, check: Check, source: str, t_ms: int, verdict: Verdict, window_ms: int = 0
    ) -> Alert | None:
        alert_id = f"{check.rule}|{source}|{verdict.field}"
        current = self.active.get(alert_id)
        if not verdict.ok:
            if current is None:
                alert = Alert(
                    alert_id=alert_id,
                    rule=check.rule,
                    kind=check.kind,
                    check=check.text,
                    state="active",
                    severity=check.severity,
                    source=source,
                    field=verdict.field,
                    value=verdict.value,
                    window=AlertWindow(start_ms=t_ms - window_ms, end_ms=t_ms),
                    evidence=verdict.evidence,
                    raised_at_ms=t_ms,
                    timestamp=t_ms,
                    violations=1,
                )
                self.active[alert_id] = alert.model_dump(mode="json")
                self._last_bad[alert_id] = (t_ms, 1)
                return alert
            _, count = self._last_bad.get(alert_id, (t_ms, 1))
            self._last_bad[alert_id] = (t_ms, count + 1)
            return None
        if current is None:
            return None
        last_bad, count = self._last_bad.get(alert_id, (current["timestamp"], 1))
        if t_ms - last_bad < check.clear_after_ms and not verdict.settles:
            return None
        del self.active[alert_id]
        self._last_bad.pop(alert_id, None)
        return Alert.model_validate(
            {
                **current,
                "state": "cleared",
                "value": verdict.value,
                "window": {"start_ms": current["raised_at_ms"], "end_ms": t_ms},
                "evidence": {**verdict.evidence, "raised_with": current["evidence"]},
                "timestamp": t_ms,
                "violations": count,
            }
        )

    def dump(self, source: str) -> dict[str, Any]:
        """The source's active alerts and their last violations."""
        active = {aid: alert for aid, alert in self.active.items() if alert["source"] == source}
        bad = {aid: list(self._last_bad[aid]) for aid in active if aid in self._last_bad}
        return {"active": active, "bad": bad}

    def forget(self, source: str) -> None:
        for alert_id in [aid for aid, a in self.active.items() if a["source"] == source]:
            del self.active[alert_id]
            self._last_bad.pop(alert_id, None)

    def has_active(self, source: str) -> bool:
        return any(alert["source"] == source for alert in self.active.values())

    def load(self, data: Mapping[str, Any]) -> None:
        self.active.update(data["active"])
        for aid, (t_ms, count) in data["bad"].items():
            self._last_bad[aid] = (int(t_ms), int(count))


@dataclass
class _FieldSeconds:
    """One field's 1 s means and the checks that read them."""

    means: SecondMeans = field(default_factory=SecondMeans)
    degradation: tuple[Check, Degradation] | None = None
    recent: deque[float] | None = None  # for pattern matching
    regime: RegimeState | None = None
    matches: list[dict[str, Any]] = field(default_factory=list)  # at the last comparison
    last_matches: list[dict[str, Any]] = field(default_factory=list)
    last_matched_ms: int | None = None


@dataclass
class _SourceState:
    monitors: list[tuple[Check, Monitor]]
    jank: list[tuple[Check, str, Jank]]
    seconds: dict[str, _FieldSeconds]


class AnalyticsEngine:
    """Every check of a rules file, for every source it sees."""

    def __init__(self, config: AnalyticsConfig, active: MutableMapping[str, Any]) -> None:
        self.config = config
        self.tracker = AlertTracker(active)
        self.sources: dict[str, _SourceState] = {}
        self.patterns = config.patterns.all_shapes
        self.thresholds = config.patterns.thresholds
        #: Sources whose state changed since the caller last cleared this.
        self.dirty: set[str] = set()
        self._analyses: list[TemporalAnalysis] = []
        regimes = config.regimes
        self._regime_check = Check(
            "regime_change",
            "regime",
            f"attractor of the last {regimes.window} s of 1 s means",
            regimes.severity,
            round(regimes.settle_s * 1000),
        )

    def take_analyses(self) -> list[TemporalAnalysis]:
        """The temporal analyses emitted since the last call (for analytics.temporal)."""
        out, self._analyses = self._analyses, []
        return out

    def observe(
        self,
        source: str,
        timestamps: Sequence[int],
        data: Mapping[str, Sequence[float | None]],
    ) -> list[Alert]:
        """Feed one message's samples (columns, in timestamp order); alerts to publish."""
        state = self.sources.get(source) or self._new_source(source)
        self.dirty.add(source)
        alerts: list[Alert] = []
        names = list(data)
        for i, t_ms in enumerate(timestamps):
            row = {name: data[name][i] for name in names}
            for check, monitor in state.monitors:
                verdict = monitor.step(t_ms, row)
                if verdict is not None:
                    self._track(alerts, check, source, t_ms, verdict)
            for check, name, jank in state.jank:
                value = row.get(name)
                if value is not None and (judged := jank.add(t_ms, value)) is not None:
                    ok, evidence = judged
                    verdict = Verdict(ok, name, value, evidence)
                    self._track(alerts, check, source, t_ms, verdict, jank.window_ms)
            for name, seconds in state.seconds.items():
                value = row.get(name)
                if value is not None and (done := seconds.means.add(t_ms, value)) is not None:
                    self._second(alerts, source, name, seconds, *done)
        return alerts

    def _track(
        self,
        alerts: list[Alert],
        check: Check,
        source: str,
        t_ms: int,
        verdict: Verdict,
        window_ms: int = 0,
    ) -> None:
        alert = self.tracker.update(check, source, t_ms, verdict, window_ms)
        if alert is not None:
            alerts.append(alert)

    def _second(
        self,
        alerts: list[Alert],
        source: str,
        name: str,
        seconds: _FieldSeconds,
        second: int,
        mean: float,
    ) -> None:
        end_ms = (second + 1) * 1000
        if seconds.degradation is not None:
            check, degradation = seconds.degradation
            judged = degradation.judge(mean)
            if judged is not None:
                ok, evidence = judged
                verdict = Verdict(ok, name, mean, {**evidence, "window": "1s"})
                self._track(alerts, check, source, end_ms, verdict, 1000)
        if seconds.recent is not None:
            seconds.recent.append(mean)
            if len(seconds.recent) == seconds.recent.maxlen:
                self._match(alerts, source, name, seconds, end_ms)
        due = (second + 1) % self.config.regimes.every_s == 0
        if seconds.regime is not None:
            seconds.regime.means.append(mean)
            if due:
                self._regime(alerts, source, name, seconds.regime, mean, end_ms)
        if due and (seconds.regime is not None or seconds.recent is not None):
            self._analyses.append(
                analysis(
                    source,
                    name,
                    end_ms,
                    seconds.regime,
                    (seconds.matches, seconds.last_matches, seconds.last_matched_ms),
                )
            )

    def _regime(
        self,
        alerts: list[Alert],
        source: str,
        name: str,
        state: RegimeState,
        mean: float,
        end_ms: int,
    ) -> None:
        verdict = state.analyse(name, mean, end_ms, self.config.regimes)
        if verdict is not None:
            span = 0 if verdict.ok else len(state.means) * 1000
            self._track(alerts, self._regime_check, source, end_ms, verdict, span)

    def _match(
        self, alerts: list[Alert], source: str, name: str, seconds: _FieldSeconds, end_ms: int
    ) -> None:
        rules: PatternRules = self.config.patterns
        recent = seconds.recent
        assert recent is not None
        values = np.fromiter(recent, dtype=np.float64, count=len(recent))
        matches, distances = match_all(
            values, self.patterns, self.thresholds, rules.sax_segments, rules.sax_alphabet
        )
        seconds.matches = [m.to_json() for m in matches]
        if matches:
            seconds.last_matches, seconds.last_matched_ms = seconds.matches, end_ms
        if not distances:
            return  # a flat stretch has no shape: no verdict either way
        span = len(recent) * 1000
        measures = ", ".join(self.thresholds)
        for pattern in self.patterns:
            check = Check(f"pattern:{pattern}", "pattern", f"'{pattern}' by {measures}", "info", 0)
            matched_by = [m.measure for m in matches if m.pattern == pattern]
            evidence = {
                "pattern": pattern,
                "distance": distances.get("dtw", {}).get(pattern),
                "max_distance": rules.max_distance,
                "seconds": len(recent),
                "measures": {
                    measure: {"distance": per.get(pattern), "threshold": self.thresholds[measure]}
                    for measure, per in distances.items()
                },
                "matched_by": matched_by,
            }
            verdict = Verdict(not matched_by, name, float(values[-1]), evidence)
            self._track(alerts, check, source, end_ms, verdict, span)

    def forget(self, source: str) -> None:
        """Drop everything about ``source`` (it was evicted: see agents/analytics.py)."""
        self.sources.pop(source, None)
        self.tracker.forget(source)
        self.dirty.discard(source)

    def dump(self, source: str) -> dict[str, Any] | None:
        """Everything the source's checks remember, as JSON; None for an unseen source."""
        state = self.sources.get(source)
        if state is None:
            return None
        return {
            "monitors": {_rule_key(check): monitor.state() for check, monitor in state.monitors},
            "jank": {_rule_key(check): jank.to_json() for check, _, jank in state.jank},
            "seconds": {
                name: {
                    "means": seconds.means.to_json(),
                    "baseline": None
                    if seconds.degradation is None
                    else seconds.degradation[1].to_json(),
                    "recent": None if seconds.recent is None else list(seconds.recent),
                    "regime": None if seconds.regime is None else seconds.regime.to_json(),
                    "matches": seconds.matches,
                    "last_matches": seconds.last_matches,
                    "last_matched_ms": seconds.last_matched_ms,
                }
                for name, seconds in state.seconds.items()
            },
            "alerts": self.tracker.dump(source),
        }

    def load(self, source: str, data: Mapping[str, Any]) -> None:
        """Put back a source's state from :meth:`dump`; checks no longer in the rules
        file are left out, new ones start afresh."""
        state = self._new_source(source)
        for check, monitor in state.monitors:
            if (saved := data["monitors"].get(_rule_key(check))) is not None:
                monitor.restore(saved)
        for check, _, jank in state.jank:
            if (frames := data["jank"].get(_rule_key(check))) is not None:
                jank.restore(frames)
        for name, seconds in state.seconds.items():
            saved = data["seconds"].get(name)
            if saved is None:
                continue
            seconds.means.restore(saved["means"])
            if seconds.degradation is not None and saved["baseline"] is not None:
                seconds.degradation[1].restore(saved["baseline"])
            if seconds.recent is not None and saved["recent"] is not None:
                seconds.recent.extend(float(v) for v in saved["recent"])
            if seconds.regime is not None and saved.get("regime") is not None:
                seconds.regime.restore(saved["regime"])
            seconds.matches = list(saved.get("matches", []))
            seconds.last_matches = list(saved.get("last_matches", []))
            seconds.last_matched_ms = saved.get("last_matched_ms")
        self.tracker.load(data["alerts"])

    def _new_source(self, source: str) -> _SourceState:
        config = self.config
        monitors = [
            (
                Check(
                    rule.name,
                    "temporal",
                    rule.check,
                    rule.severity,
                    round(rule.clear_after_s * 1000),
                ),
                rule.spec.monitor(),
            )
            for rule in config.rules
            if rule.applies_to(source)
        ]
        jank = [
            (
                Check(
                    rule.name,
                    "anomaly",
                    f"{rule.min_share:.0%} of frames over {rule.budget_ms:g} ms in 1 s",
                    rule.severity,
                    1000,
                ),
                rule.field,
                Jank(
                    budget_ms=rule.budget_ms, min_share=rule.min_share, min_frames=rule.min_frames
                ),
            )
            for rule in config.jank
            if rule.applies_to(source)
        ]
        seconds: dict[str, _FieldSeconds] = {}
        for degradation in config.degradation:
            if degradation.applies_to(source):
                for name, worse in degradation.fields.items():
                    text = (
                        f"robust z of the 1 s mean vs 5 min, {worse} is worse, "
                        f"|z| > {degradation.z_cutoff:g}"
                    )
                    check = Check("degradation", "anomaly", text, degradation.severity, 1000)
                    seconds.setdefault(name, _FieldSeconds()).degradation = (
                        check,
                        Degradation(worse=worse, z_cutoff=degradation.z_cutoff),
                    )
        for watch in config.patterns.watch:
            if watch.applies_to(source):
                for name in watch.fields:
                    seconds.setdefault(name, _FieldSeconds()).recent = deque(
                        maxlen=config.patterns.length
                    )
        for watch in config.regimes.watch:
            if watch.applies_to(source):
                for name in watch.fields:
                    seconds.setdefault(name, _FieldSeconds()).regime = RegimeState(
                        deque(maxlen=config.regimes.window)
                    )
        state = _SourceState(monitors, jank, seconds)
        self.sources[source] = state
        return state


def _rule_key(check: Check) -> str:
    """A check's identity across restarts: its name and text (an edited rule starts afresh)."""
    return f"{check.rule}|{check.text}"
