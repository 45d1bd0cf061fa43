"""Message schemas, defined once; JSON Schema files beside them for other languages."""

from kestrel.schemas.metrics import MetricEnvelope, WindowAggregate, parse_envelope

__all__ = ["MetricEnvelope", "WindowAggregate", "parse_envelope"]
