"""A watched field's regime over time: its recent 1 s means, the regime it holds.

Every ``regimes.every_s`` seconds the engine asks :meth:`RegimeState.analyse` for a
verdict: the field's last ``window`` 1 s means are classified
(:func:`kestrel.analytics.attractor.classify`); the first full window sets the held
regime; a different regime, on which the window's recent half agrees (a window that
spans a change reads as neither regime, often as chaotic), seen in ``confirm``
analyses in a row, replaces it and is
a violation (the ``regime_change`` alert, with the regime before and after and the
evidence); the held regime seen again is a pass (which clears the alert once it has
held ``settle_s``). Everything here is JSON for the state protocol.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from kestrel.analytics.attractor import MIN_POINTS, classify
from kestrel.analytics.config import RegimeRules
from kestrel.analytics.temporal import Verdict
from kestrel.schemas.temporal import PatternMatch, RegimeEvidence, TemporalAnalysis


@dataclass
class RegimeState:
    """A field's regime: its recent 1 s means, the regime it holds, a candidate."""

    means: deque[float]
    current: dict[str, Any] | None = None  # the last analysis (Regime.to_json())
    held: str | None = None  # the confirmed regime
    held_since_ms: int | None = None
    candidate: str | None = None
    streak: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "means": list(self.means),
            "current": self.current,
            "held": self.held,
            "held_since_ms": self.held_since_ms,
            "candidate": self.candidate,
            "streak": self.streak,
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        self.means.extend(float(v) for v in data["means"])
        self.current = data["current"]
        self.held = data["held"]
        self.held_since_ms = data["held_since_ms"]
        self.candidate = data["candidate"]
        self.streak = int(data["streak"])

    def analyse(self, name: str, mean: float, end_ms: int, rules: RegimeRules) -> Verdict | None:
        """Classify the window; a verdict on the held regime, or None (no news yet)."""
        if len(self.means) < (self.means.maxlen or 0):
            return None  # not a full window yet
        series = np.fromiter(self.means, dtype=np.float64, count=len(self.means))
        regime = classify(series)
        self.current = regime.to_json()
        if self.held is None:
            self.held, self.held_since_ms = regime.kind, end_ms
            return None
        if regime.kind == self.held:
            self.candidate, self.streak = None, 0
            return Verdict(True, name, mean, {"regime": regime.kind})
        recent = series[-max(MIN_POINTS, len(series) // 2) :]
        if len(recent) < len(series) and classify(recent).kind != regime.kind:
            # A window that spans a change reads as neither regime (often chaotic):
            # a new regime counts only when the window's recent half (at least
            # MIN_POINTS) agrees.
            self.candidate, self.streak = None, 0
            return None
        if regime.kind == self.candidate:
            self.streak += 1
        else:
            self.candidate, self.streak = regime.kind, 1
        if self.streak < rules.confirm:
            return None
        before = self.held
        self.held, self.held_since_ms = regime.kind, end_ms
        self.candidate, self.streak = None, 0
        evidence = {
            "before": before,
            "after": regime.kind,
            "period_s": regime.period,
            "lyapunov_per_s": regime.lyapunov,
            "determinism": regime.determinism,
            "drift": regime.drift,
            "lag_s": regime.lag,
            "dimension": regime.dimension,
            "window_s": len(self.means),
        }
        return Verdict(False, name, mean, evidence)


Matches = tuple[list[dict[str, Any]], list[dict[str, Any]], int | None]


def analysis(
    source: str, name: str, end_ms: int, regime: RegimeState | None, matches: Matches
) -> TemporalAnalysis:
    """The field's record for ``analytics.temporal``."""
    now, last, last_ms = matches
    evidence = None
    if regime is not None and regime.current is not None:
        c = regime.current
        evidence = RegimeEvidence(
            kind=c["kind"],
            period_s=c["period"],
            lyapunov_per_s=c["lyapunov"],
            lag_s=c["lag"],
            dimension=c["dimension"],
            determinism=c["determinism"],
            drift=c["drift"],
        )
    return TemporalAnalysis(
        source=source,
        field=name,
        timestamp=end_ms,
        window_s=0 if regime is None else len(regime.means),
        regime=evidence,
        regime_since_ms=None if regime is None else regime.held_since_ms,
        matches=[PatternMatch.model_validate(m) for m in now],
        last_matches=[PatternMatch.model_validate(m) for m in last],
        last_matched_ms=last_ms,
    )
