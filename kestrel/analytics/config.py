"""The rules file: which checks run on which sources (YAML, validated on load).

``KESTREL_RULES_PATH`` names the file; without it the analytics worker uses
``kestrel/analytics/default_rules.yaml``, which holds the digest's checks. A source
pattern is a shell-style glob (``model:*``).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kestrel.analytics.attractor import MIN_POINTS
from kestrel.analytics.dtw import REFERENCE_PATTERNS
from kestrel.analytics.temporal import RuleSpec, parse_rule
from kestrel.errors import KestrelError

DEFAULT_RULES = Path(__file__).with_name("default_rules.yaml")
Severity = Literal["info", "warning", "critical"]


class RulesFileError(KestrelError):
    """The rules file is missing, not YAML, or not valid; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def applies_to(self, source: str) -> bool:
        return fnmatchcase(source, getattr(self, "source", ""))


class TemporalRule(_Strict):
    name: str
    source: str
    check: str = Field(description="A rule of kestrel.analytics.temporal's grammar.")
    severity: Severity = "warning"
    clear_after_s: float = Field(
        default=1.0, ge=0, description="Holding this long clears the alert."
    )

    @field_validator("check")
    @classmethod
    def _parses(cls, check: str) -> str:
        parse_rule(check)  # a RuleError is a ValueError: pydantic reports it
        return check

    @property
    def spec(self) -> RuleSpec:
        return parse_rule(self.check)


class JankRule(_Strict):
    name: str = "sustained_jank"
    source: str = "ui"
    field: str = "frame_time_ms"
    budget_ms: float = 1000 / 60
    min_share: float = Field(default=0.3, gt=0, le=1)
    min_frames: int = Field(default=10, ge=1)
    severity: Severity = "warning"


class DegradationRule(_Strict):
    source: str
    fields: dict[str, Literal["higher", "lower", "either"]] = Field(
        description="Field to the direction that is worse."
    )
    z_cutoff: float = Field(default=3.5, gt=0)
    severity: Severity = "warning"


class PatternWatch(_Strict):
    source: str
    fields: list[str]


class PatternRules(_Strict):
    length: int = Field(default=30, ge=4, description="Seconds of 1 s means compared.")
    max_distance: float = Field(default=0.45, gt=0, description="DTW's cut-off.")
    lcs_max_distance: float | None = Field(
        default=0.3, gt=0, le=1, description="LCS of SAX words; null: not computed."
    )
    edit_max_distance: float | None = Field(
        default=0.4, gt=0, le=1, description="Edit distance of SAX words; null: not computed."
    )
    sax_segments: int = Field(default=15, ge=2, le=256)
    sax_alphabet: int = Field(default=7, ge=2, le=26)
    watch: list[PatternWatch] = []
    shapes: dict[str, list[float]] = Field(
        default_factory=dict, description="Named shapes added to the built-in ones."
    )

    @property
    def all_shapes(self) -> dict[str, tuple[float, ...]]:
        extra = {name: tuple(shape) for name, shape in self.shapes.items()}
        return {**REFERENCE_PATTERNS, **extra}

    @property
    def thresholds(self) -> dict[str, float]:
        """Each measure computed, with its cut-off."""
        cuts = {"dtw": self.max_distance, "lcs": self.lcs_max_distance}
        cuts["edit"] = self.edit_max_distance
        return {measure: cut for measure, cut in cuts.items() if cut is not None}


class RegimeRules(_Strict):
    """Attractor and regime of each watched field's 1 s means (kestrel.analytics.attractor)."""

    window: int = Field(
        default=300, ge=MIN_POINTS, le=1200, description="Seconds of 1 s means analysed."
    )
    every_s: int = Field(default=10, ge=1, description="How often a field is analysed.")
    confirm: int = Field(
        default=3,
        ge=1,
        description="Analyses in a row a new regime needs before it counts: a window that "
        "spans the change reads as neither regime (often chaotic) for a while.",
    )
    settle_s: float = Field(
        default=60.0,
        ge=0,
        description="A regime change alert clears once the new regime has held this long.",
    )
    severity: Severity = "warning"
    watch: list[PatternWatch] = []


class AnalyticsConfig(_Strict):
    rules: list[TemporalRule] = []
    jank: list[JankRule] = []
    degradation: list[DegradationRule] = []
    patterns: PatternRules = Field(default_factory=PatternRules)
    regimes: RegimeRules = Field(default_factory=RegimeRules)


def load_rules(path: Path | None = None) -> AnalyticsConfig:
    """Read and validate a rules file (the default one when ``path`` is None)."""
    path = path or DEFAULT_RULES
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RulesFileError(f"cannot read rules file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise RulesFileError(f"rules file {path} is not YAML: {exc}") from None
    try:
        return AnalyticsConfig.model_validate(raw or {})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RulesFileError(f"rules file {path}: {where}: {first['msg']}") from None
