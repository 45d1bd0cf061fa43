"""Telemetry messages: the collector envelope and the windowed aggregate.

The envelope is the digest's (section A): one JSON object per Kafka message, keyed
by ``source``. Downstream consumers read the JSON Schema files beside this module
(``python -m kestrel.schemas`` writes them from these models).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kestrel.errors import InvalidMessage

SOURCE_PATTERN = r"^(system|ui|model:[A-Za-z0-9._/-]{1,100}|camera:[A-Za-z0-9._-]{1,64})$"
FieldName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]

#: The largest magnitude a sample may have. Finite, and small enough that a window's
#: sum cannot overflow a double: a window holds at most a few million samples.
MAX_MAGNITUDE = 1e300
#: Fields and samples one message may carry; more is a producer's bug, not telemetry.
MAX_FIELDS = 256
MAX_SAMPLES = 10_000
Value = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)]
#: Epoch milliseconds: positive, and exact in a double (JSON readers in other languages).
EpochMs = Annotated[int, Field(gt=0, lt=2**53)]

#: Which collector topic each kind of source publishes to.
SOURCE_TOPICS = {
    "system": "metrics.system",
    "ui": "metrics.ui",
    "model": "metrics.model",
    "camera": "metrics.camera",
}


def topic_suffix_for(source: str) -> str:
    """The collector topic (without namespace) a source belongs on."""
    return SOURCE_TOPICS[source.partition(":")[0]]


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


class SampleColumns(BaseModel):
    """Every sample of one collector interval, column by column.

    ``timestamp[i]`` is the event time of row ``i``; ``data[field][i]`` its value (null:
    unknown). Rows are in timestamp order.
    """

    model_config = ConfigDict(frozen=True)

    timestamp: list[EpochMs] = Field(min_length=1, max_length=MAX_SAMPLES)
    data: dict[FieldName, list[Value | None]] = Field(max_length=MAX_FIELDS)

    @model_validator(mode="after")
    def _rectangular_and_ordered(self) -> Self:
        rows = len(self.timestamp)
        for name, column in self.data.items():
            if len(column) != rows:
                raise ValueError(f"data.{name} has {len(column)} values for {rows} timestamps")
        if any(b < a for a, b in zip(self.timestamp, self.timestamp[1:], strict=False)):
            raise ValueError("timestamps are not in ascending order")
        return self


class MetricEnvelope(BaseModel):
    """One collector message: the digest's envelope, optionally carrying a batch.

    ``timestamp`` and ``data`` hold the latest sample, so a consumer that knows only
    the digest's envelope reads it unchanged. A collector that samples faster than it
    publishes adds ``samples`` with every sample of the interval (the latest included);
    the stream worker then counts those instead of ``data``.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    timestamp: EpochMs = Field(description="Event time, epoch milliseconds.")
    source: str = Field(
        pattern=SOURCE_PATTERN, description='"system", "ui", "model:<name>" or "camera:<id>".'
    )
    type: Literal["metrics", "performance"]
    data: dict[FieldName, Value | None] = Field(
        max_length=MAX_FIELDS, description="Field to value; null if unknown."
    )
    samples: SampleColumns | None = Field(None, description="Every sample of the interval.")
    window: str | None = Field(None, description='Pre-aggregated window, e.g. "10s_avg".')
    frame_budget_used_ms: float | None = None
    energy_visual: EnergyVisual | None = None
    alerts: UxAlerts | None = None

    @model_validator(mode="after")
    def _carries_a_field(self) -> Self:
        fields = self.data if self.samples is None else self.samples.data
        if not fields:
            raise PydanticCustomError("empty_data", "the message carries no field")
        return self

    @property
    def newest_ms(self) -> int:
        """The latest event time the message carries."""
        return self.timestamp if self.samples is None else self.samples.timestamp[-1]


class WindowAggregate(BaseModel):
    """The final value of one tumbling window of one field of one source."""

    model_config = ConfigDict(frozen=True)

    source: str
    field: str
    window: Literal["1s", "10s", "5m"]
    window_start_ms: int = Field(description="Inclusive start, epoch ms.")
    window_end_ms: int = Field(description="Exclusive end, epoch ms.")
    count: int = Field(ge=0, description="Non-null values in the window.")
    sum: float
    mean: float | None
    min: float | None
    max: float | None
    last: float | None = Field(description="The value with the latest timestamp.")
    p50: float | None = Field(description="Quantiles from a DDSketch, within 1 % relative.")
    p95: float | None
    p99: float | None

    @property
    def key(self) -> str:
        """The compaction key: one record per window survives compaction."""
        return f"{self.source}|{self.field}|{self.window}|{self.window_start_ms}"


class LateSamples(BaseModel):
    """Samples that reached the worker after their window (of one size) had closed."""

    source: str
    window: Literal["1s", "10s", "5m"]
    window_start_ms: int
    stream_time_ms: int = Field(description="The partition's stream time when they came.")
    timestamp: list[int]
    data: dict[str, list[float | None]]
    topic: str
    partition: int
    offset: int


_REASONS = {
    "json_invalid": "bad_json",
    "missing": "missing_field",
    "empty_data": "empty_data",
    "too_long": "oversize",
}


def parse_envelope(raw: bytes) -> MetricEnvelope:
    """Validate one collector message; raise :class:`InvalidMessage` saying what is wrong."""
    try:
        return MetricEnvelope.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        reason = _REASONS.get(first["type"], "invalid_field")
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise InvalidMessage(reason, f"{where}: {first['msg']}") from None


def check_event_time(envelope: MetricEnvelope, now_ms: int, max_future_ms: int) -> None:
    """Refuse samples stamped further ahead of the wall clock than ``max_future_ms``.

    Stream time only moves forward: one sample from the year 3000 would close every
    window of its partition for good and make every later sample late.
    """
    ahead = envelope.newest_ms - now_ms
    if ahead > max_future_ms:
        raise InvalidMessage(
            "future_timestamp",
            f"timestamp {envelope.newest_ms} is {ahead / 1000:.0f} s ahead of this worker's "
            f"clock (KESTREL_MAX_FUTURE_S={max_future_ms / 1000:g}); check the collector's clock",
        )
