"""``python -m kestrel.schemas``: write the JSON Schema files from the models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from kestrel.schemas.alerts import Alert
from kestrel.schemas.analysis import AnalysisCancel, AnalysisEvent, AnalysisRequest
from kestrel.schemas.camera import CameraConfig, CameraResult, FrameDetections, FrameDropped
from kestrel.schemas.metrics import LateSamples, MetricEnvelope, WindowAggregate
from kestrel.schemas.temporal import TemporalAnalysis

HERE = Path(__file__).parent
SCHEMAS: dict[str, type[BaseModel]] = {
    "metric_envelope.json": MetricEnvelope,
    "window_aggregate.json": WindowAggregate,
    "late_samples.json": LateSamples,
    "alert.json": Alert,
    "camera_config.json": CameraConfig,
    "camera_result.json": CameraResult,
    "frame_detections.json": FrameDetections,
    "frame_dropped.json": FrameDropped,
    "temporal_analysis.json": TemporalAnalysis,
    "analysis_request.json": AnalysisRequest,
    "analysis_cancel.json": AnalysisCancel,
    "analysis_event.json": AnalysisEvent,
}


def render(model: type[BaseModel]) -> str:
    """The JSON Schema of one model, as committed in this folder."""
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    for filename, model in SCHEMAS.items():
        (HERE / filename).write_text(render(model))
        print("wrote", HERE / filename)
    return 0


if __name__ == "__main__":
    sys.exit(main())
