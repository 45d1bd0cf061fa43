"""The inference worker's side of on-demand analysis: admit, queue, cancel, finish.

:class:`RequestDesk` owns the lanes (:mod:`kestrel.ondemand.lanes`), the requests in
flight and the ids cancelled lately; it makes each request's events
(:mod:`kestrel.ondemand.run`) and hands them to ``emit(event, ack)``, where ``ack`` is
the request's record with its last event, None before (the worker acks the record once
that last event is delivered). The batcher (:mod:`agents.inference`) takes items from
:attr:`RequestDesk.lanes` and gives back what the detector found.

A cancel may come before its request (the two are on different topics): its id is
remembered for ``CANCEL_MEMORY_S`` and the request, when it comes, ends at once.

A clip is one item per sampled frame (:mod:`kestrel.ondemand.clip`), queued together;
they reach the batches in order, each frame's detections are kept, and once the last
is in, the tracker runs over them all (:mod:`kestrel.ondemand.tracks`) and each frame
goes out as a token. A clip stopped midway (cancel, deadline, a frame that fails)
ends once, and its frames still queued are taken out.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kestrel.errors import InvalidMessage
from kestrel.ondemand.clip import ClipFrame
from kestrel.ondemand.lanes import Lane, LaneFull, LaneQueues, Queued
from kestrel.ondemand.run import RequestRun
from kestrel.ondemand.tracks import follow
from kestrel.schemas.analysis import AnalysisRequest, AnyEvent, Finding, FrameResult
from kestrel.schemas.camera import CameraConfig, Detection

log = logging.getLogger(__name__)

CANCEL_MEMORY_S = 600.0
CANCEL_MEMORY_MAX = 10_000  # ids remembered at most (a producer chooses them)
SHED = "the worker is short of memory: low requests are shed first; retry later"

Emit = Callable[[AnyEvent, Any], None]
Ack = Callable[[Any], None]


@dataclass
class Item:
    """One image of a request (or one frame of its clip) waiting for (or in) a batch."""

    run: RequestRun
    image: bytes
    ack: Any  # what the worker acks once the request's last event is delivered
    frame: ClipFrame | None = None
    position: int = 0  # among the clip's sampled frames


class RequestDesk:
    def __init__(
        self,
        emit: Emit,
        ack: Ack,
        capacity: dict[Lane, int] | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.emit = emit
        self.ack = ack
        self.clock_ms = clock_ms  # epoch ms: deadlines are epoch ms
        self.lanes: LaneQueues[Item] = (
            LaneQueues(capacity=dict(capacity)) if capacity else LaneQueues()
        )
        self.active: dict[str, Item] = {}
        self.cancelled: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self.counts: dict[str, int] = {}
        #: Set under extreme memory pressure: low requests are refused, not queued.
        self.refuse_low = False

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def _end(self, item: Item, event: AnyEvent, outcome: str) -> None:
        self.active.pop(item.run.request_id, None)
        if item.run.clip_frames:  # the rest of its frames will not be needed
            self.lanes.remove(item.run.request_id)
        self._count(outcome)
        self.emit(event, item.ack)

    @staticmethod
    def _first_of_each(taken: list[Queued[Item]]) -> list[Item]:
        """One item per request still running (a clip's frames end it once)."""
        seen: set[str] = set()
        firsts = []
        for queued in taken:
            if queued.request_id not in seen and queued.item.run.ended is None:
                seen.add(queued.request_id)
                firsts.append(queued.item)
        return firsts

    # Admission ------------------------------------------------------------------------
    def admit(
        self,
        request: AnalysisRequest,
        lane: Lane,
        ack: Any,
        frames: list[ClipFrame] | None = None,
        refused: InvalidMessage | None = None,
    ) -> None:
        """Queue a request's image (or its clip's ``frames``), or end it at once
        (cancelled, late, lane full, or ``refused``: its clip did not decode)."""
        now_ms = self.clock_ms()
        run = RequestRun(request)
        items = [Item(run, request.image or b"", ack)]
        if frames:
            run.clip_frames = len(frames)
            items = [Item(run, f.jpeg, ack, f, i) for i, f in enumerate(frames)]
        item = items[0]
        request_id = request.request_id
        if request_id in self.active:  # the same request again while it runs: it runs once
            log.warning("request %s is already running; its copy is skipped", request_id)
            self._count("duplicate")
            self.ack(ack)
            return
        self.active[request_id] = item
        if request.priority is not lane:
            message = f"priority {request.priority} on the {lane} lane's topic"
            self._end(item, run.error("bad_request", message), "refused")
            return
        cancel = self.cancelled.get(request_id)
        if cancel is not None:
            self._end(item, run.cancelled(cancel[1]), "cancelled")
            return
        if refused is not None or (request.clip is not None and not frames):
            code, why = (refused.reason, refused.detail) if refused else ("not_a_clip", "")
            self._end(item, run.error(code, why), "refused")
            return
        if lane is Lane.LOW and self.refuse_low:
            self._end(item, run.error("memory_pressure", SHED), "memory_pressure")
            return
        due = request.due_ms()
        if due is not None and due <= now_ms:
            self._end(item, self.late(run, now_ms), "deadline_exceeded")
            return
        try:
            self.lanes.put_all(lane, request_id, due, items)
        except LaneFull as exc:
            self._end(item, run.error("lane_full", str(exc)), "lane_full")
            return
        waiting = self.lanes.waiting((lane,))
        self.emit(run.update("queued", 0.0, f"{waiting} waiting in the {lane} lane"), None)

    @staticmethod
    def late(run: RequestRun, now_ms: int) -> AnyEvent:
        due = run.request.due_ms()
        over = 0 if due is None else now_ms - due
        return run.error(
            "deadline_exceeded", f"its deadline passed {over} ms ago, in phase {run.phase}"
        )

    # Cancels --------------------------------------------------------------------------
    def cancel(self, request_id: str, reason: str) -> None:
        """Remember the cancel; a queued request ends now, a running one at its next item."""
        log.info("cancel of %s: %s", request_id, reason)
        self.cancelled[request_id] = (time.monotonic(), reason)
        self.cancelled.move_to_end(request_id)
        horizon = time.monotonic() - CANCEL_MEMORY_S
        while self.cancelled and (
            len(self.cancelled) > CANCEL_MEMORY_MAX
            or next(iter(self.cancelled.values()))[0] < horizon
        ):
            self.cancelled.popitem(last=False)
        for first in self._first_of_each(self.lanes.remove(request_id)):
            self._end(first, first.run.cancelled(reason), "cancelled")

    def stopped(self, item: Item) -> bool:
        """End the request if it was cancelled or its deadline passed; True if it has
        ended (now, or before: another frame of its clip ended it)."""
        if item.run.ended is not None:
            return True
        now_ms = self.clock_ms()
        cancel = self.cancelled.get(item.run.request_id)
        if cancel is not None:
            self._end(item, item.run.cancelled(cancel[1]), "cancelled")
            return True
        due = item.run.request.due_ms()
        if due is not None and due < now_ms:
            self._end(item, self.late(item.run, now_ms), "deadline_exceeded")
            return True
        return False

    def shed_low(self) -> int:
        """End every queued low request (extreme memory pressure); how many."""
        shed = self._first_of_each(self.lanes.drain(Lane.LOW))
        for first in shed:
            self._end(first, first.run.error("memory_pressure", SHED), "memory_pressure")
        return len(shed)

    def expire(self) -> None:
        """End every queued request whose deadline has passed."""
        now_ms = self.clock_ms()
        for first in self._first_of_each(self.lanes.overdue(now_ms)):
            self._end(first, self.late(first.run, now_ms), "deadline_exceeded")

    # Work -----------------------------------------------------------------------------
    def started(self, taken: list[Queued[Item]], batch_size: int, rss_mb: float) -> None:
        for queued in taken:
            event = queued.item.run.start(batch_size, rss_mb)
            if event is not None:
                self.emit(event, None)

    def failed(self, item: Item, code: str, message: str) -> None:
        """The request ends with an error (a clip too: its frames are one analysis)."""
        if item.run.ended is None:
            self._end(item, item.run.error(code, message), code)

    def finish(
        self,
        item: Item,
        detections: list[Detection],
        size: tuple[int, int],
        camera: CameraConfig | None,
        score_threshold: float,
        model: str,
    ) -> None:
        """Context, generation and validation of one image, checking for a cancel or
        the deadline between findings."""
        run, emit = item.run, self.emit
        if run.ended is not None:  # a clip stopped by an earlier frame
            return
        if item.frame is not None:
            self._finish_frame(item, detections, size, camera, score_threshold, model)
            return
        emit(run.update("image_analysis", 1.0, f"{len(detections)} detections"), None)
        if self.stopped(item):
            return
        emit(run.update("context", 0.0, "zones" if camera else "no camera"), None)
        findings = run.find(detections, camera, score_threshold)
        emit(run.update("context", 1.0, f"{len(findings)} findings"), None)
        self._generate(item, findings, size, model)

    def _finish_frame(
        self,
        item: Item,
        detections: list[Detection],
        size: tuple[int, int],
        camera: CameraConfig | None,
        score_threshold: float,
        model: str,
    ) -> None:
        """One frame of a clip; after its last, the tracker over all and one token each."""
        run, emit, frame = item.run, self.emit, item.frame
        assert frame is not None
        run.detected[item.position] = (frame.index, frame.t_ms, detections)
        done, total = len(run.detected), run.clip_frames
        emit(run.update("image_analysis", done / total, f"frame {done} of {total}"), None)
        if done < total or self.stopped(item):
            return
        emit(run.update("context", 0.0, f"tracking over {total} frames"), None)
        frames = [run.detected[i] for i in range(total)]
        results, run.tracks = follow(frames, camera, score_threshold, run.request.max_items)
        emit(run.update("context", 1.0, f"{len(run.tracks)} tracks"), None)
        self._generate(item, results, size, model)

    def _generate(
        self,
        item: Item,
        tokens: Sequence[Finding | FrameResult],
        size: tuple[int, int],
        model: str,
    ) -> None:
        """One token each (an image's findings, a clip's frames), then the validated
        result; a cancel or the deadline is checked before each."""
        run, emit = item.run, self.emit
        emit(run.update("generation", 0.0), None)
        for token in tokens:
            if self.stopped(item):
                return
            emit(run.token(token), None)
        if self.stopped(item):
            return
        emit(run.update("validation", 0.0), None)
        width, height = size
        try:
            result = run.result(width, height, model)
        except ValueError as exc:  # pydantic's ValidationError: a bug, said to the client
            self.failed(item, "invalid_result", str(exc)[:500])
            return
        self._end(item, run.complete(result), "complete")
