"""Message schemas, defined once; JSON Schema files beside them for other languages."""

from kestrel.schemas.metrics import (
    LateSamples,
    MetricEnvelope,
    SampleColumns,
    WindowAggregate,
    parse_envelope,
    topic_suffix_for,
)

__all__ = [
    "LateSamples",
    "MetricEnvelope",
    "SampleColumns",
    "WindowAggregate",
    "parse_envelope",
    "topic_suffix_for",
]
