"""On-demand analysis messages: requests, cancels, and the events of each request.

The contract for any Kafka producer that submits work and any consumer that follows
it (digest C and D). JSON Schema files beside this module: ``analysis_request.json``,
``analysis_cancel.json``, ``analysis_event.json``.

- A request goes to ``analysis.requests.<priority>`` keyed by its ``request_id``.
- A cancel goes to ``analysis.cancel`` (any key); every inference worker reads it.
- Events go to ``analysis.events`` keyed by ``request_id``: in order within a request
  (one partition), numbered from 0 by ``seq``. The inference stage writes them at
  least once: after a worker crash a request is run again and its events come again
  with the same numbers, so a reader keeps the first of each ``seq``. A request ends
  with exactly one of ``complete``, ``error`` (``recoverable: false``) or ``cancelled``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Base64Bytes, BaseModel, ConfigDict, Field, RootModel, model_validator

from kestrel.ondemand.lanes import Lane
from kestrel.schemas.camera import BoxList, Finite

RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
MAX_ITEMS = 1_000


class AnalysisRequest(BaseModel):
    """An image or a short clip to analyse, with its priority and deadline."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["image"], "properties": {"image": {"type": "string"}}},
                {"required": ["clip"], "properties": {"clip": {"type": "string"}}},
            ]
        }
    )

    request_id: RequestId
    priority: Lane
    submitted_ms: int = Field(gt=0, description="Epoch ms when the request was made.")
    deadline_ms: int | None = Field(
        None,
        gt=0,
        description="Epoch ms by which it must complete; null: the lane's default after "
        "submitted_ms (urgent 2 s, high 5 s, normal 10 s; low has none).",
    )
    image: Base64Bytes | None = Field(
        default=None, description="A JPEG, PNG or WebP file, base64; or give ``clip``."
    )
    clip: Base64Bytes | None = Field(
        default=None,
        description="A short video (MP4/MOV, WebM/Matroska, AVI), base64; its frames are "
        "sampled (KESTREL_CLIP_FPS) and tracked. Or give ``image``.",
    )
    camera_id: str | None = Field(
        None, max_length=200, description="A registered camera whose zones apply."
    )
    score_threshold: Finite | None = Field(None, gt=0, lt=1)
    max_items: int | None = Field(None, ge=1, le=MAX_ITEMS, description="Findings at most.")
    events_before: int = Field(
        0, ge=0, description="Events already published for it (the web's upload_update)."
    )

    @model_validator(mode="after")
    def _one_medium(self) -> AnalysisRequest:
        if (self.image is None) == (self.clip is None):
            raise ValueError("give exactly one of image and clip")
        return self

    def due_ms(self) -> int | None:
        """The absolute deadline: given, or the lane's default."""
        if self.deadline_ms is not None:
            return self.deadline_ms
        default = self.priority.default_deadline_ms
        return None if default is None else self.submitted_ms + default


class AnalysisCancel(BaseModel):
    request_id: RequestId
    requested_ms: int = Field(gt=0)
    reason: str = Field("cancelled by the client", max_length=200)


class Finding(BaseModel):
    """One object found: its box in the image's pixels, and the camera's zones it is in."""

    position: int = Field(ge=0)
    label: str
    score: Finite = Field(ge=0, le=1)
    box: BoxList
    zones: list[str] = []
    track_id: int | None = Field(default=None, description="A clip's: the object's track.")


class FrameResult(BaseModel):
    """A clip's frame: what was found in it (a clip's token carries one)."""

    position: int = Field(ge=0, description="Among the clip's sampled frames.")
    frame: int = Field(ge=0, description="The frame's number in the clip.")
    t_ms: int = Field(ge=0, description="Its time in the clip.")
    findings: list[Finding] = Field(max_length=MAX_ITEMS)


class TrackSummary(BaseModel):
    """One object followed through a clip by the tracker."""

    track_id: int
    label: str
    first_ms: int
    last_ms: int
    frames: int = Field(description="Sampled frames it was seen in.")
    best_score: Finite
    zones: list[str] = Field(description="Zones it was in at any time.")


class AnalysisResult(BaseModel):
    """The validated result: what ``complete`` carries beside its summary."""

    media: Literal["image", "clip"] = "image"
    width: int
    height: int
    findings: list[Finding] = Field(max_length=MAX_ITEMS, description="An image's.")
    frames: list[FrameResult] = Field([], description="A clip's, in order.")
    tracks: list[TrackSummary] = Field([], description="A clip's objects, by track.")
    counts: dict[str, int] = Field(
        description="Per label: findings (an image), distinct tracks (a clip)."
    )
    zones: dict[str, dict[str, int]] = Field(
        description="Zone -> label -> findings (tracks, for a clip) in it."
    )
    model: str


class Summary(BaseModel):
    """The digest's per-session telemetry (section D), also sent to ``metrics.model``."""

    total_tokens: int
    average_token_latency_ms: float | None
    p95_token_latency_ms: float | None
    first_token_ms: float | None = Field(description="From the start of work to the first token.")
    throughput_tokens_per_s: float | None
    max_memory_usage_mb: float
    error_count: int
    error_rate: float
    most_common_batch_size: int | None
    queue_ms: float = Field(description="From submission to the start of work.")
    total_ms: float = Field(description="From submission to the end.")


class UploadUpdate(BaseModel):
    """An upload's preparation: an image is compressed, a clip's header is checked."""

    phase: Literal["received", "waiting", "compressing", "compressed", "checked", "submitted"]
    upload_id: str
    media: Literal["image", "clip"] = "image"
    original_bytes: int | None = None
    compressed_bytes: int | None = None
    ratio: float | None = None
    format: str | None = None
    quality: int | None = None
    target_met: bool | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = Field(default=None, description="A clip's, from its header.")
    frames: int | None = Field(default=None, description="A clip's, from its header.")
    fps: float | None = None


class StreamUpdate(BaseModel):
    phase: Literal["queued", "image_analysis", "context", "generation", "validation"]
    progress: float = Field(ge=0, le=100)
    detail: str = ""


class Token(BaseModel):
    id: str
    text: str
    position: int
    latency_ms: float = Field(description="From the previous token (the first: the start).")
    data: Finding | FrameResult = Field(description="An image's finding, or a clip's frame.")


class Error(BaseModel):
    code: str
    message: str
    recoverable: bool


class Complete(BaseModel):
    summary: Summary
    result: AnalysisResult


class Cancelled(BaseModel):
    phase: str = Field(description="Where the work was when it stopped.")
    reason: str


class _Event(BaseModel):
    request_id: RequestId
    seq: int = Field(ge=0)
    ts_ms: int


class UploadUpdateEvent(_Event):
    type: Literal["upload_update"] = "upload_update"
    payload: UploadUpdate


class StreamUpdateEvent(_Event):
    type: Literal["stream_update"] = "stream_update"
    payload: StreamUpdate


class TokenEvent(_Event):
    type: Literal["token"] = "token"
    payload: Token


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    payload: Error


class CompleteEvent(_Event):
    type: Literal["complete"] = "complete"
    payload: Complete


class CancelledEvent(_Event):
    type: Literal["cancelled"] = "cancelled"
    payload: Cancelled


AnyEvent = Annotated[
    UploadUpdateEvent
    | StreamUpdateEvent
    | TokenEvent
    | ErrorEvent
    | CompleteEvent
    | CancelledEvent,
    Field(discriminator="type"),
]


class AnalysisEvent(RootModel[AnyEvent]):
    """One event of a request on ``analysis.events``; ``type`` says which payload."""


FINAL = ("complete", "error", "cancelled")


def is_final(event: AnyEvent) -> bool:
    """Does the event end its request? (An ``error`` does when it is not recoverable.)"""
    if isinstance(event, ErrorEvent):
        return not event.payload.recoverable
    return event.type in ("complete", "cancelled")
