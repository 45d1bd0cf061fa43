"""Alerts: what the ``alerts`` topic carries, keyed by ``alert_id``.

An alert is published twice: once when its condition starts (``state: "active"``)
and once when it ends (``state: "cleared"``), both with the same ``alert_id``, so a
consumer that keeps the latest record per key knows what is active now.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class AlertWindow(BaseModel):
    """The span of event time the evidence covers."""

    model_config = ConfigDict(frozen=True)

    start_ms: int
    end_ms: int


class Alert(BaseModel):
    """One alert's start or end."""

    model_config = ConfigDict(frozen=True)

    alert_id: str = Field(description='"<rule>|<source>|<field>"; the Kafka key.')
    rule: str = Field(description="The rule's name in the rules file.")
    kind: Literal["temporal", "anomaly", "pattern", "regime"]
    check: str = Field(description="What was checked, e.g. 'frame_time_ms <= 16.67 always'.")
    state: Literal["active", "cleared"]
    severity: Literal["info", "warning", "critical"]
    source: str
    field: str
    value: float | None = Field(description="The value that raised it, or that cleared it.")
    window: AlertWindow
    evidence: dict[str, Any] = Field(description="The figures behind the verdict.")
    raised_at_ms: int = Field(description="Event time of the first violation.")
    timestamp: int = Field(description="Event time of this start or end.")
    violations: int = Field(ge=1, description="Violating samples (or seconds) while active.")
