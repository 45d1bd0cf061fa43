"""What the ``analytics.temporal`` topic carries: each watched field's regime and matches.

The analytics worker publishes one record per watched (source, field) every
``regimes.every_s`` seconds of event time, keyed ``source|field`` (the topic is
compacted: the latest record per field is its current state). The series analysed
are the field's 1 s means, so periods are in seconds and exponents per second.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RegimeEvidence(BaseModel):
    """The attractor of the field's last ``window_s`` 1 s means (kestrel.analytics.attractor)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["fixed_point", "periodic", "chaotic", "drifting"]
    period_s: float | None = Field(description="The period of a periodic field.")
    lyapunov_per_s: float | None = Field(
        description="Largest Lyapunov exponent (Rosenstein), if estimated."
    )
    lag_s: int = Field(description="The delay of the phase-space reconstruction.")
    dimension: int = Field(description="The embedding dimension (false nearest neighbours).")
    determinism: float = Field(description="Nearest-neighbour forecast skill: 0 noise, 1 exact.")
    drift: float = Field(description="The fitted trend over the window, in residual deviations.")


class PatternMatch(BaseModel):
    """A named shape the field's recent 1 s means matched, by one measure."""

    model_config = ConfigDict(frozen=True)

    pattern: str
    measure: Literal["dtw", "lcs", "edit"]
    distance: float
    threshold: float


class TemporalAnalysis(BaseModel):
    """One watched field's temporal analysis; key ``source|field``."""

    model_config = ConfigDict(frozen=True)

    source: str
    field: str
    timestamp: int = Field(description="Event time (epoch ms) of the end of the last second.")
    window_s: int = Field(description="Seconds of 1 s means the regime was read from; 0: none.")
    regime: RegimeEvidence | None = Field(description="None until the window is full.")
    regime_since_ms: int | None = Field(description="When the current regime was confirmed.")
    matches: list[PatternMatch] = Field(description="Matches at the last comparison.")
    last_matches: list[PatternMatch] = Field(description="The most recent non-empty matches.")
    last_matched_ms: int | None = Field(description="When those were found.")

    @property
    def key(self) -> str:
        return f"{self.source}|{self.field}"
