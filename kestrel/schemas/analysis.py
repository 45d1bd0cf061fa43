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

from pydantic import Base64Bytes, BaseModel, Field, RootModel

from kestrel.ondemand.lanes import Lane
from kestrel.schemas.camera import BoxList, Finite

RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
MAX_ITEMS = 1_000


class AnalysisRequest(BaseModel):
    """An image to analyse, with its priority and deadline."""

    request_id: RequestId
    priority: Lane
    submitted_ms: int = Field(gt=0, description="Epoch ms when the request was made.")
    deadline_ms: int | None = Field(
        None,
        gt=0,
        description="Epoch ms by which it must complete; null: the lane's default after "
        "submitted_ms (urgent 2 s, high 5 s, normal 10 s; low has none).",
    )
    image: Base64Bytes = Field(description="A JPEG, PNG or WebP file, base64.")
    camera_id: str | None = Field(
        None, max_length=200, description="A registered camera whose zones apply."
    )
    score_threshold: Finite | None = Field(None, gt=0, lt=1)
    max_items: int | None = Field(None, ge=1, le=MAX_ITEMS, description="Findings at most.")
    events_before: int = Field(
        0, ge=0, description="Events already published for it (the web's upload_update)."
    )

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


class AnalysisResult(BaseModel):
    """The validated result: what ``complete`` carries beside its summary."""

    width: int
    height: int
    findings: list[Finding] = Field(max_length=MAX_ITEMS)
    counts: dict[str, int] = Field(description="Findings per label.")
    zones: dict[str, dict[str, int]] = Field(description="Zone -> label -> findings in it.")
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
    phase: Literal["received", "waiting", "compressing", "compressed", "submitted"]
    upload_id: str
    original_bytes: int | None = None
    compressed_bytes: int | None = None
    ratio: float | None = None
    format: str | None = None
    quality: int | None = None
    target_met: bool | None = None


class StreamUpdate(BaseModel):
    phase: Literal["queued", "image_analysis", "context", "generation", "validation"]
    progress: float = Field(ge=0, le=100)
    detail: str = ""


class Token(BaseModel):
    id: str
    text: str
    position: int
    latency_ms: float = Field(description="From the previous token (the first: the start).")
    data: Finding


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
