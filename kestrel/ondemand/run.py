"""One request's run through its phases: numbered events, progress and its telemetry.

Digest C's phases with their progress ranges: image analysis 0-30 % (decode, detect),
context 30-50 % (the camera's zones), generation 50-80 % (one token per finding, as
soon as it exists), validation 80-100 % (the result checked against its schema). A
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
    StreamUpdate,
    StreamUpdateEvent,
    Summary,
    Token,
    TokenEvent,
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

    def start(self, batch_size: int, rss_mb: float) -> AnyEvent:
        self.started = self.last_token = self.clock()
        self.batch_sizes.append(batch_size)
        self.max_rss_mb = max(self.max_rss_mb, rss_mb)
        return self.update("image_analysis", 0.0, f"decoding, in a batch of {batch_size}")

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

    def token(self, finding: Finding) -> AnyEvent:
        """The generation phase: one finding out, as soon as it exists."""
        now = self.clock()
        assert self.started is not None and self.last_token is not None
        gap = (now - self.last_token) * 1000
        if self.first_token_ms is None:
            self.first_token_ms = (now - self.started) * 1000
        self.token_gaps_ms.append(gap)
        self.last_token = now
        self.findings.append(finding)
        x1, y1, x2, y2 = (round(v) for v in finding.box)
        text = f"{finding.label} {finding.score:.2f} at [{x1}, {y1}, {x2}, {y2}]"
        if finding.zones:
            text += f" in {', '.join(finding.zones)}"
        payload = Token(
            id=f"{self.request_id}:{finding.position}",
            text=text,
            position=finding.position,
            latency_ms=round(gap, 3),
            data=finding,
        )
        return TokenEvent(**self._next(), payload=payload)  # type: ignore[arg-type]

    def result(self, width: int, height: int, model: str) -> AnalysisResult:
        """The validation phase: the findings as a result, checked by its schema."""
        zones: dict[str, Counter[str]] = {}
        for finding in self.findings:
            for zone in finding.zones:
                zones.setdefault(zone, Counter())[finding.label] += 1
        built = AnalysisResult(
            width=width,
            height=height,
            findings=self.findings,
            counts=dict(Counter(f.label for f in self.findings)),
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
