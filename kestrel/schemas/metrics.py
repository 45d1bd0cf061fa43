"""Telemetry messages: the collector envelope and the windowed aggregate.

The envelope is the digest's (section A): one JSON object per Kafka message, keyed
by ``source``. Downstream consumers read the JSON Schema files beside this module
(``python -m kestrel.schemas`` writes them from these models).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kestrel.errors import InvalidMessage

SOURCE_PATTERN = r"^(system|ui|model:[A-Za-z0-9._/-]{1,100})$"


class EnergyVisual(BaseModel):
    """Model messages: the energy mapping, each value in 0..1."""

    ribbon_width: float = Field(ge=0, le=1)
    particle_density: float = Field(ge=0, le=1)
    animation_speed: float = Field(ge=0, le=1)
    lightning_intensity: float = Field(ge=0, le=1)


class UxAlerts(BaseModel):
    """UX messages: the dashboard's own alarms about its frame timing."""

    frame_budget_breach: bool
    sustained_jank: bool
    input_lag_warning: bool


class MetricEnvelope(BaseModel):
    """One collector message: a source's metric values at one instant."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    timestamp: int = Field(gt=0, description="Event time, epoch milliseconds.")
    source: str = Field(pattern=SOURCE_PATTERN, description='"system", "ui" or "model:<name>".')
    type: Literal["metrics", "performance"]
    data: dict[str, float | None] = Field(description="Field name to value; null if unknown.")
    window: str | None = Field(None, description='Pre-aggregated window, e.g. "10s_avg".')
    frame_budget_used_ms: float | None = None
    energy_visual: EnergyVisual | None = None
    alerts: UxAlerts | None = None


class WindowAggregate(BaseModel):
    """The final value of one tumbling window of one field of one source."""

    model_config = ConfigDict(frozen=True)

    source: str
    field: str
    window: Literal["1s", "10s", "5m"]
    window_start_ms: int = Field(description="Inclusive start, epoch ms.")
    window_end_ms: int = Field(description="Exclusive end, epoch ms.")
    count: int = Field(ge=1)
    sum: float
    mean: float

    @property
    def key(self) -> str:
        """The compaction key: one record per window survives compaction."""
        return f"{self.source}|{self.field}|{self.window}|{self.window_start_ms}"


_REASONS = {"json_invalid": "bad_json", "missing": "missing_field"}


def parse_envelope(raw: bytes) -> MetricEnvelope:
    """Validate one collector message; raise :class:`InvalidMessage` saying what is wrong."""
    try:
        return MetricEnvelope.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        reason = _REASONS.get(first["type"], "invalid_field")
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise InvalidMessage(reason, f"{where}: {first['msg']}") from None
