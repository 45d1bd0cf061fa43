"""Anomaly detectors: degradation against a metric's own 5-minute baseline, and jank.

Degradation uses the **robust z-score** (Iglewicz and Hoaglin): for a metric's latest
1 s mean ``x`` and the 1 s means of the 5 minutes before it,
``z = 0.6745 * (x - median) / MAD``. The median and the median absolute deviation
ignore the outliers that a mean and a standard deviation would chase, so a spike does
not raise its own baseline. ``|z| > 3.5`` in the metric's bad direction is an anomaly
(their recommended cut-off). A flat baseline has MAD 0; the MAD is then floored at 1 %
of the median's magnitude (and at 1e-9), so that only a real change is an anomaly.
The baseline needs 30 points (30 s) before it judges anything.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Z_CUTOFF = 3.5
MAD_SCALE = 0.6745  # the MAD of a normal distribution is 0.6745 standard deviations
MIN_BASELINE_POINTS = 30
BASELINE_SECONDS = 300


@dataclass
class SecondMeans:
    """A field's mean per second of event time; :meth:`add` returns finished seconds.

    A sample older than the second being filled is left out of the means (they are
    a baseline, not a record; the windows keep the exact figures).
    """

    second: int | None = None
    total: float = 0.0
    count: int = 0

    def add(self, t_ms: int, value: float) -> tuple[int, float] | None:
        second = t_ms // 1000
        finished = None
        if self.second is None or second > self.second:
            if self.second is not None and self.count:
                finished = (self.second, self.total / self.count)
            self.second, self.total, self.count = second, 0.0, 0
        elif second < self.second:
            return None
        self.total += value
        self.count += 1
        return finished

    def to_json(self) -> list[Any]:
        return [self.second, self.total, self.count]

    def restore(self, data: list[Any]) -> None:
        self.second, self.total, self.count = data[0], float(data[1]), int(data[2])


@dataclass
class Degradation:
    """The robust z-score of one metric's 1 s means against its last 5 minutes."""

    worse: Literal["higher", "lower", "either"] = "higher"
    z_cutoff: float = Z_CUTOFF
    history: deque[float] = field(default_factory=lambda: deque(maxlen=BASELINE_SECONDS))

    def judge(self, mean: float) -> tuple[bool, dict[str, float]] | None:
        """Is ``mean`` anomalous against the baseline? Then add it to the baseline.

        None while the baseline has fewer than 30 points.
        """
        verdict = None
        if len(self.history) >= MIN_BASELINE_POINTS:
            values = np.fromiter(self.history, dtype=np.float64, count=len(self.history))
            median = float(np.median(values))
            mad = float(np.median(np.abs(values - median)))
            floor = max(1e-9, 0.01 * abs(median))
            z = MAD_SCALE * (mean - median) / max(mad, floor)
            bad = {"higher": z > self.z_cutoff, "lower": z < -self.z_cutoff}.get(
                self.worse, abs(z) > self.z_cutoff
            )
            verdict = (
                not bad,
                {
                    "mean_1s": mean,
                    "baseline_median": median,
                    "baseline_mad": mad,
                    "robust_z": z,
                    "z_cutoff": self.z_cutoff,
                    "baseline_points": float(len(values)),
                },
            )
        self.history.append(mean)
        return verdict

    def to_json(self) -> list[float]:
        return list(self.history)

    def restore(self, history: list[float]) -> None:
        self.history.clear()
        self.history.extend(float(v) for v in history)


@dataclass
class Jank:
    """Sustained jank: in the last ``window_ms`` of frames, a share over budget.

    One slow frame is a frame-budget breach; jank is *sustained* when at least
    ``min_share`` of at least ``min_frames`` frames in the last second missed the
    16.67 ms budget (defaults: 30 % of >= 10 frames, i.e. about 18 of 60 at 60 Hz).
    """

    budget_ms: float = 1000 / 60
    window_ms: int = 1000
    min_share: float = 0.3
    min_frames: int = 10
    frames: deque[tuple[int, bool]] = field(default_factory=deque)
    over: int = 0

    def add(self, t_ms: int, frame_time_ms: float) -> tuple[bool, dict[str, float]] | None:
        late = frame_time_ms > self.budget_ms
        self.frames.append((t_ms, late))
        self.over += late
        while self.frames and self.frames[0][0] <= t_ms - self.window_ms:
            _, was_late = self.frames.popleft()
            self.over -= was_late
        n = len(self.frames)
        if n < self.min_frames:
            return None
        share = self.over / n
        return share < self.min_share, {
            "frames": float(n),
            "over_budget": float(self.over),
            "share_over_budget": share,
            "budget_ms": self.budget_ms,
            "min_share": self.min_share,
        }

    def to_json(self) -> list[list[int]]:
        return [[t, int(late)] for t, late in self.frames]

    def restore(self, frames: list[list[int]]) -> None:
        self.frames = deque((int(t), bool(late)) for t, late in frames)
        self.over = sum(late for _, late in self.frames)
