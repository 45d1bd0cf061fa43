"""One request's run through its phases: numbered events, progress and its telemetry.

Digest C's phases with their progress ranges: image analysis 0-30 % (decode, detect;
for a clip, each sampled frame in turn), context 30-50 % (the camera's zones; for a
clip, the tracker over its frames), generation 50-80 % (one token per finding, or per
frame of a clip, as soon as it exists), validation 80-100 % (the result checked
against its schema). A
:class:`RequestRun` makes each event (numbered from the request's ``events_before``)
and the ``complete`` summary (digest D's per-session telemetry); it holds no I/O, so
the worker decides where events go and the tests read them directly.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kestrel.camera.geometry import foot, inside
from kestrel.schemas.analysis import (
    AnalysisRequest,
    AnalysisResult,
    AnyEvent,
    Cancelled,
    CancelledEvent,
    Complete,
    CompleteEvent,
    Error,
    ErrorEvent,
    Finding,
    FrameResult,
    StreamUpdate,
    StreamUpdateEvent,
    Summary,
    Token,
    TokenEvent,
    TrackSummary,
)
from kestrel.schemas.camera import CameraConfig, Detection

PHASES = {
    "queued": (0.0, 0.0),
    "image_analysis": (0.0, 30.0),
    "context": (30.0, 50.0),
    "generation": (50.0, 80.0),
    "validation": (80.0, 100.0),
}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class RequestRun:
    request: AnalysisRequest
    clock: Callable[[], float] = time.monotonic
    seq: int = -1
    phase: str = "queued"
    started: float | None = None  # monotonic, when work began (its batch)
    last_token: float | None = None
    token_gaps_ms: list[float] = field(default_factory=list)
    first_token_ms: float | None = None
    batch_sizes: list[int] = field(default_factory=list)
    errors: int = 0
    max_rss_mb: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    ended: str | None = None  # complete, error or cancelled once final
    # A clip's: its sampled frames, what each held (None: it failed), the tracker's view.
    clip_frames: int = 0
    detected: dict[int, tuple[int, int, list[Detection] | None]] = field(default_factory=dict)
    frame_results: list[FrameResult] = field(default_factory=list)
    tracks: list[TrackSummary] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seq = self.request.events_before - 1

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def _next(self) -> dict[str, int | str]:
        self.seq += 1
        return {"request_id": self.request_id, "seq": self.seq, "ts_ms": _now_ms()}

    def update(self, phase: str, fraction: float = 0.0, detail: str = "") -> AnyEvent:
        """``stream_update`` at ``fraction`` (0..1) of ``phase``'s progress range."""
        self.phase = phase
        low, high = PHASES[phase]
        progress = low + (high - low) * min(max(fraction, 0.0), 1.0)
        payload = StreamUpdate(phase=phase, progress=round(progress, 2), detail=detail)  # type: ignore[arg-type]
        return StreamUpdateEvent(**self._next(), payload=payload)  # type: ignore[arg-type]

    def start(self, batch_size: int, rss_mb: float) -> AnyEvent | None:
        """Work begins (its first batch); None for a clip's later batches."""
        self.batch_sizes.append(batch_size)
        self.max_rss_mb = max(self.max_rss_mb, rss_mb)
        if self.started is not None:
            return None
        self.started = self.last_token = self.clock()
        what = f"{self.clip_frames} frames of a clip" if self.clip_frames else "decoding"
        return self.update("image_analysis", 0.0, f"{what}, in a batch of {batch_size}")

    def find(
        self,
        detections: list[Detection],
        camera: CameraConfig | None,
        score_threshold: float,
    ) -> list[Finding]:
        """The context phase: the findings kept, each with the camera's zones it is in."""
        kept = [d for d in detections if d.score >= score_threshold]
        kept.sort(key=lambda d: -d.score)
        if self.request.max_items is not None:
            kept = kept[: self.request.max_items]
        zones = camera.zones if camera is not None else []
        return [
            Finding(
                position=i,
                label=d.label,
                score=d.score,
                box=d.box,
                zones=[z.name for z in zones if inside(foot(d.box), z.polygon)],
            )
            for i, d in enumerate(kept)
        ]

    def token(self, data: Finding | FrameResult) -> AnyEvent:
        """The generation phase: one finding (a clip: one frame) out, as soon as it exists."""
        now = self.clock()
        assert self.started is not None and self.last_token is not None
        gap = (now - self.last_token) * 1000
        if self.first_token_ms is None:
            self.first_token_ms = (now - self.started) * 1000
        self.token_gaps_ms.append(gap)
        self.last_token = now
        if isinstance(data, Finding):
            self.findings.append(data)
            text = _describe(data)
        else:
            self.frame_results.append(data)
            seen = "; ".join(_describe(f) for f in data.findings) or "nothing"
            text = f"frame {data.frame} at {data.t_ms / 1000:.2f} s: {seen}"
        payload = Token(
            id=f"{self.request_id}:{data.position}",
            text=text,
            position=data.position,
            latency_ms=round(gap, 3),
            data=data,
        )
        return TokenEvent(**self._next(), payload=payload)  # type: ignore[arg-type]

    def result(self, width: int, height: int, model: str) -> AnalysisResult:
        """The validation phase: the findings as a result, checked by its schema."""
        zones: dict[str, Counter[str]] = {}
        counted: list[Finding] | list[TrackSummary] = (
            self.tracks if self.clip_frames else self.findings
        )
        for one in counted:
            for zone in one.zones:
                zones.setdefault(zone, Counter())[one.label] += 1
        built = AnalysisResult(
            media="clip" if self.clip_frames else "image",
            width=width,
            height=height,
            findings=self.findings,
            frames=self.frame_results,
            tracks=self.tracks,
            counts=dict(Counter(one.label for one in counted)),
            zones={name: dict(counts) for name, counts in zones.items()},
            model=model,
        )
        # Round trip through JSON: what a consumer will parse is what was checked.
        return AnalysisResult.model_validate_json(built.model_dump_json())

    def summary(self) -> Summary:
        now = self.clock()
        submitted_ago_ms = max(0.0, _now_ms() - self.request.submitted_ms)
        worked_ms = 0.0 if self.started is None else (now - self.started) * 1000
        gaps = self.token_gaps_ms
        tokens = len(gaps)
        return Summary(
            total_tokens=tokens,
            average_token_latency_ms=float(np.mean(gaps)) if gaps else None,
            p95_token_latency_ms=float(np.percentile(gaps, 95)) if gaps else None,
            first_token_ms=self.first_token_ms,
            throughput_tokens_per_s=tokens / (worked_ms / 1000) if tokens and worked_ms else None,
            max_memory_usage_mb=round(self.max_rss_mb, 1),
            error_count=self.errors,
            error_rate=self.errors / max(1, tokens + self.errors),
            most_common_batch_size=(
                Counter(self.batch_sizes).most_common(1)[0][0] if self.batch_sizes else None
            ),
            queue_ms=max(0.0, submitted_ago_ms - worked_ms),
            total_ms=submitted_ago_ms,
        )

    def complete(self, result: AnalysisResult) -> AnyEvent:
        self.ended = "complete"
        payload = Complete(summary=self.summary(), result=result)
        return CompleteEvent(**self._next(), payload=payload)  # type: ignore[arg-type]

    def error(self, code: str, message: str, recoverable: bool = False) -> AnyEvent:
        self.errors += 1
        if not recoverable:
            self.ended = "error"
        payload = Error(code=code, message=message, recoverable=recoverable)
        return ErrorEvent(**self._next(), payload=payload)  # type: ignore[arg-type]

    def cancelled(self, reason: str) -> AnyEvent:
        self.ended = "cancelled"
        payload = Cancelled(phase=self.phase, reason=reason)
        return CancelledEvent(**self._next(), payload=payload)  # type: ignore[arg-type]


def _describe(finding: Finding) -> str:
    x1, y1, x2, y2 = (round(v) for v in finding.box)
    text = f"{finding.label} {finding.score:.2f} at [{x1}, {y1}, {x2}, {y2}]"
    if finding.track_id is not None:
        text = f"#{finding.track_id} {text}"
    if finding.zones:
        text += f" in {', '.join(finding.zones)}"
    return text
