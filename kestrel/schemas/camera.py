"""Camera messages: the registry's camera config, detections, and the results topic.

``CameraResult`` is the digest's output shape (section B), the contract with
downstream consumers; its JSON Schema is ``camera_result.json`` beside this module.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Finite = Annotated[float, Field(allow_inf_nan=False)]
Point = Annotated[list[Finite], Field(min_length=2, max_length=2)]
BoxList = Annotated[list[Finite], Field(min_length=4, max_length=4, description="x1, y1, x2, y2")]
MAX_DETECTIONS = 1_000


#: Why a frame got no result: the inference group's two reasons, and the tracker's.
DropReason = Literal["backpressure", "expired", "out_of_order"]


class Zone(BaseModel):
    """A polygon in frame pixels; an object is in it when its box's bottom centre is."""

    name: str
    polygon: list[Point] = Field(min_length=3)


class Line(BaseModel):
    """A counting line from ``a`` to ``b``; crossing it left-to-right (seen from a) is "in"."""

    name: str
    a: Point
    b: Point


class CameraConfig(BaseModel):
    """One camera in the ``cameras`` registry (compacted, keyed by camera id)."""

    model_config = ConfigDict(extra="forbid")

    camera_id: str
    source: str = Field(
        description="Where frames come from: synthetic:<seed>, a file, a URL, a device."
    )
    fps: float = Field(gt=0, le=120)
    zones: list[Zone] = []
    lines: list[Line] = []


class Detection(BaseModel):
    label: str = Field(min_length=1, max_length=100)
    score: Finite = Field(ge=0, le=1)
    box: BoxList


class FrameDetections(BaseModel):
    """``camera.detections``: the inference group's output for one frame."""

    camera_id: str
    frame_id: str
    seq: int
    capture_ts_ns: int = Field(gt=0)
    width: int
    height: int
    detections: list[Detection] = Field(max_length=MAX_DETECTIONS)
    dropped: Literal["backpressure", "expired"] | None = Field(
        default=None, description="Set when the frame was never detected: why (no detections then)."
    )
    model: str
    provider: str
    batch_size: int
    queue_ms: float = Field(description="From the frame's arrival to its batch's start.")
    decode_ms: float
    inference_ms: float = Field(description="The batch's session run.")
    broker_in_ms: float = Field(description="From capture to the inference worker's receipt.")


class TrackedObject(BaseModel):
    track_id: int
    label: str
    score: float
    box: BoxList
    velocity: Annotated[list[float], Field(min_length=2, max_length=2, description="px/frame")]
    age: int = Field(description="Frames since the track started.")
    zones: list[str]


class LineCount(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    in_: int = Field(alias="in")
    out: int


class AggSummary(BaseModel):
    counts: dict[str, int] = Field(description="Tracked objects in this frame, per class.")
    zones: dict[str, dict[str, int]] = Field(description="Zone -> class -> objects in it now.")
    line_crossings: dict[str, LineCount] = Field(description="Crossings since tracking began.")
    active_tracks: int


class PostProcessingResult(BaseModel):
    agg_summary: AggSummary
    tracked_objects: list[TrackedObject]


class ModelResult(BaseModel):
    model: str
    provider: str
    batch_size: int
    detections: list[Detection]


class ResultMetadata(BaseModel):
    capture_ts_ns: int
    seq: int
    width: int
    height: int
    stages_ms: dict[str, float] = Field(
        description="broker_in, queue, decode, inference, to_tracking, tracking."
    )


class ResultData(BaseModel):
    post_processing_result: PostProcessingResult
    model_result: ModelResult
    metadata: ResultMetadata
    processing_time: float = Field(description="Seconds from capture to this result.")
    stream_key: str


class FrameDropped(BaseModel):
    """A frame that got no result, on ``camera.results``: which, and why.

    ``backpressure``: its camera's queue in the inference worker was full and it was
    the oldest; ``expired``: it waited longer than ``KESTREL_FRAME_MAX_AGE_S``;
    ``out_of_order``: its detections reached the tracker after those of a frame
    captured later (the tracker cannot go back in time).
    """

    camera_id: str
    message_key: str
    frame_id: str
    input_stream: str = Field(description="The topic the frame came in on.")
    kind: Literal["frame_dropped"] = "frame_dropped"
    reason: DropReason
    capture_ts_ns: int
    seq: int


class CameraResult(BaseModel):
    """One frame's result on ``camera.results``, keyed by camera id."""

    camera_id: str
    message_key: str
    frame_id: str
    input_stream: str = Field(description="The topic the frame came in on.")
    kind: Literal["camera_result"] = "camera_result"
    data: ResultData
