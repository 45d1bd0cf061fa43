"""Memory pressure in the inference worker: warn early, shrink batches, shed low work.

Digest D's monitor. Each batch, the worker reads its own RSS and the host's memory in
use and takes the highest level either reaches:

- ``warning`` (its RSS over ``warn_rss_mb`` or the host over ``warn_host_percent``):
  logged once per rise, counted;
- ``pressure`` (over ``pressure_*``): the next batches are halved (the adaptive
  batch size's own step), counted;
- ``extreme`` (over ``extreme_*``): the low lane is shed before anything else: its
  queued requests end with ``error`` ``memory_pressure`` and new low requests are
  refused until the level falls; counted per request.

The levels and their counts go out with the worker's request metrics, so the page
shows them.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class Level(enum.IntEnum):
    NORMAL = 0
    WARNING = 1
    PRESSURE = 2
    EXTREME = 3


@dataclass(frozen=True)
class Limits:
    warn_rss_mb: float = 1_800.0
    pressure_rss_mb: float = 2_400.0
    extreme_rss_mb: float = 3_000.0
    warn_host_percent: float = 80.0
    pressure_host_percent: float = 90.0
    extreme_host_percent: float = 95.0

    @classmethod
    def for_budget(cls, rss_budget_mb: float) -> Limits:
        """Warning at 60 % of the worker's memory budget, pressure at 80 %, extreme at it."""
        return cls(0.6 * rss_budget_mb, 0.8 * rss_budget_mb, rss_budget_mb)


@dataclass
class MemoryPressure:
    limits: Limits = field(default_factory=Limits)
    level: Level = Level.NORMAL
    rss_mb: float = 0.0
    host_percent: float = 0.0
    counts: dict[str, int] = field(
        default_factory=lambda: {"warnings": 0, "batch_halvings": 0, "low_shed": 0}
    )

    def observe(self, rss_mb: float, host_percent: float) -> Level:
        """The level for these readings; counts and logs a rise."""
        limits = self.limits
        level = Level.NORMAL
        for candidate, rss, host in (
            (Level.WARNING, limits.warn_rss_mb, limits.warn_host_percent),
            (Level.PRESSURE, limits.pressure_rss_mb, limits.pressure_host_percent),
            (Level.EXTREME, limits.extreme_rss_mb, limits.extreme_host_percent),
        ):
            if rss_mb >= rss or host_percent >= host:
                level = candidate
        if level > self.level:
            log.warning(
                "memory %s: worker RSS %.0f MB, host %.0f %% in use",
                level.name.lower(),
                rss_mb,
                host_percent,
            )
            if level >= Level.WARNING and self.level < Level.WARNING:
                self.counts["warnings"] += 1
        elif level < self.level:
            log.info("memory back to %s", level.name.lower())
        self.level, self.rss_mb, self.host_percent = level, rss_mb, host_percent
        return level

    @property
    def shrink_batches(self) -> bool:
        return self.level >= Level.PRESSURE

    @property
    def shed_low(self) -> bool:
        return self.level >= Level.EXTREME
