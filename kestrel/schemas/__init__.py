"""Message schemas, defined once; JSON Schema files beside them for other languages."""

from kestrel.schemas.alerts import Alert, AlertWindow
from kestrel.schemas.metrics import (
    LateSamples,
    MetricEnvelope,
    SampleColumns,
    WindowAggregate,
    check_event_time,
    parse_envelope,
    topic_suffix_for,
)

__all__ = [
    "Alert",
    "AlertWindow",
    "LateSamples",
    "MetricEnvelope",
    "SampleColumns",
    "WindowAggregate",
    "check_event_time",
    "parse_envelope",
    "topic_suffix_for",
]
