"""On-demand analysis in the web server: uploads in, each request's events out.

The server only prepares and streams (digest C): an upload is checked and prepared in
the upload queue (:mod:`web.uploads`), its ``upload_update`` events and then its
request go out (the request on its lane's topic); the inference group does the work.
:class:`RequestBook` follows ``analysis.events`` (through the hot cache's feed) and
publishes each event on the hub's ``analysis:<id>`` channel, whose backfill is
every event so far, so a client that reconnects, or a server that restarts, gets the
rest from where it was. Finished requests are kept ``RETENTION_S`` (30 s), and at
most ``HISTORY`` (1000) requests are remembered.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message

from kestrel.ondemand.lanes import DEFAULT_CAPACITY, LANE_ORDER, Lane
from kestrel.producer import KestrelProducer
from kestrel.schemas.analysis import (
    MAX_ITEMS,
    AnalysisCancel,
    AnalysisRequest,
    AnyEvent,
    UploadUpdate,
    UploadUpdateEvent,
    is_final,
)
from kestrel.settings import Settings
from kestrel.topics import ANALYSIS_CANCEL, ANALYSIS_EVENTS, ANALYSIS_REQUESTS
from web.hub import Hub
from web.uploads import Prepared, UploadQueue, UploadRefused

log = logging.getLogger(__name__)

RETENTION_S = 30.0
HISTORY = 1_000
MAX_EVENTS = MAX_ITEMS + 50  # a request's tokens and its phases
DELIVERY_TIMEOUT_S = 10.0


@dataclass
class Tracked:
    """What the server knows of one request, from its events."""

    request_id: str
    lane: Lane | None = None  # known for the requests this server submitted
    events: list[dict[str, Any]] = field(default_factory=list)
    last_seq: int = -1
    outcome: str | None = None
    phase: str = "submitted"
    progress: float = 0.0
    finished: float | None = None  # monotonic

    def status(self) -> dict[str, Any]:
        tokens = sum(1 for e in self.events if e["type"] == "token")
        return {
            "id": self.request_id,
            "lane": self.lane,
            "state": self.outcome or ("running" if self.phase != "queued" else "queued"),
            "phase": self.phase,
            "progress": self.progress,
            "tokens": tokens,
            "events": len(self.events),
            "last_seq": self.last_seq,
            "final": self.events[-1] if self.outcome else None,
        }


class RequestBook:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.requests: OrderedDict[str, Tracked] = OrderedDict()
        self.duplicates = 0

    def track(self, request_id: str, lane: Lane | None = None) -> Tracked:
        tracked = self.requests.get(request_id)
        if tracked is None:
            tracked = self.requests[request_id] = Tracked(request_id, lane)
            self.sweep()
        elif lane is not None:
            tracked.lane = lane
        return tracked

    def add(self, event: AnyEvent) -> None:
        """One event from ``analysis.events``: kept, and published on its channel."""
        tracked = self.track(event.request_id)
        if event.seq <= tracked.last_seq:  # written again after a worker's restart
            self.duplicates += 1
            return
        tracked.last_seq = event.seq
        data = event.model_dump(mode="json")
        if len(tracked.events) < MAX_EVENTS:
            tracked.events.append(data)
        if event.type == "stream_update":
            tracked.phase, tracked.progress = event.payload.phase, event.payload.progress
        if is_final(event):
            tracked.outcome = event.type
            tracked.progress = 100.0 if event.type == "complete" else tracked.progress
            tracked.finished = time.monotonic()
        self.hub.publish(f"analysis:{event.request_id}", str(event.seq), data)

    def sweep(self) -> None:
        """Forget finished requests after RETENTION_S, and the oldest beyond HISTORY."""
        horizon = time.monotonic() - RETENTION_S
        for request_id, tracked in list(self.requests.items()):
            if tracked.finished is not None and tracked.finished < horizon:
                del self.requests[request_id]
        while len(self.requests) > HISTORY:
            self.requests.popitem(last=False)

    def in_flight(self, lane: Lane) -> int:
        return sum(1 for t in self.requests.values() if t.lane is lane and t.outcome is None)

    def backfill(self, request_id: str) -> dict[str, Any]:
        tracked = self.requests.get(request_id)
        if tracked is None:
            return {"events": [], "known": False}
        return {"events": list(tracked.events), "known": True}

    def counts(self) -> dict[str, Any]:
        by_state: dict[str, int] = {}
        for tracked in self.requests.values():
            state = tracked.status()["state"]
            by_state[state] = by_state.get(state, 0) + 1
        return {
            "tracked": len(self.requests),
            "by_state": by_state,
            "in_flight": {lane.value: self.in_flight(lane) for lane in LANE_ORDER},
            "duplicates": self.duplicates,
        }


@dataclass(frozen=True)
class Submission:
    """A validated request's parameters (from a form or a WebSocket message)."""

    lane: Lane
    deadline_ms: int | None
    camera_id: str | None
    score_threshold: float | None
    max_items: int | None


def parse_submission(fields: dict[str, str]) -> Submission:
    """The fields of a submit, each checked; :class:`UploadRefused` (400) says which."""

    def bad(name: str, why: str) -> UploadRefused:
        return UploadRefused(400, "bad_field", f"{name}: {why}")

    priority = fields.get("priority", "normal")
    if priority not in {lane.value for lane in LANE_ORDER}:
        raise bad("priority", "one of urgent, high, normal, low")

    def number(name: str, kind: type[float] | type[int], low: float, high: float) -> Any:
        raw = fields.get(name)
        if raw in (None, ""):
            return None
        try:
            value = kind(str(raw))
        except ValueError:
            raise bad(name, f"not a{'n integer' if kind is int else ' number'}") from None
        if not low <= value <= high:  # NaN fails both
            raise bad(name, f"must be in [{low:g}, {high:g}]")
        return value

    camera_id = fields.get("camera_id") or None
    if camera_id is not None and len(camera_id) > 200:
        raise bad("camera_id", "at most 200 characters")
    return Submission(
        lane=Lane(priority),
        deadline_ms=number("deadline_ms", int, 1, 3_600_000),
        camera_id=camera_id,
        score_threshold=number("score_threshold", float, 0.01, 0.99),
        max_items=number("max_items", int, 1, MAX_ITEMS),
    )


def _settle(future: asyncio.Future[KafkaError | None], err: KafkaError | None) -> None:
    if not future.done():
        future.set_result(err)


class Analyze:
    """Submits and cancels; one per web server."""

    def __init__(self, settings: Settings, hub: Hub, producer: KestrelProducer | None) -> None:
        self.settings = settings
        self.book = RequestBook(hub)
        self.producer = producer
        self.queue = UploadQueue(settings)
        self._poller: threading.Thread | None = None
        self._stopped = threading.Event()

    async def submit(self, data: bytes, submission: Submission) -> dict[str, Any]:
        """Check, prepare and publish one image or clip (see :meth:`publish`)."""
        self._check(submission)
        prepared = await self.queue.prepare(data, submission.lane.rank)
        # Its deadline counts from when the upload came, its preparation included.
        return await self.publish(prepared, submission, prepared.received_ms)

    async def submit_staged(self, upload_id: str, submission: Submission) -> dict[str, Any]:
        """Publish a staged upload (``POST /api/v1/uploads``) by its id."""
        self._check(submission)
        return await self.publish(self.queue.take(upload_id), submission)

    def _check(self, submission: Submission) -> None:
        if self.producer is None:
            raise self.queue.refuse(503, "no_kafka", "this server does not publish to Kafka")
        lane = submission.lane
        capacity = DEFAULT_CAPACITY[lane]
        if self.book.in_flight(lane) >= capacity:
            message = f"the {lane} lane has {capacity} requests in flight; retry later"
            raise self.queue.refuse(429, "lane_full", message)

    async def publish(
        self, prepared: Prepared, submission: Submission, since_ms: int | None = None
    ) -> dict[str, Any]:
        """The upload's events, then its request on its lane's topic; its id (the
        upload's), status URL and channel. Nothing is published before this.
        ``since_ms``: when the request was made (default: now, as for a staged upload)."""
        lane = submission.lane
        request_id = prepared.upload_id
        upload = prepared.upload
        upload.lane = lane.value
        self.book.track(request_id, lane)
        submitted_ms = since_ms or time.time_ns() // 1_000_000
        prepared.phase("submitted")
        events_topic = ANALYSIS_EVENTS.name(self.settings)
        uploads = []
        for seq, (phase, report) in enumerate(prepared.phases):
            fields = {k: v for k, v in report.items() if k in UploadUpdate.model_fields}
            payload = UploadUpdate(
                phase=phase,  # type: ignore[arg-type]
                upload_id=request_id,
                media=upload.media,
                **fields,
            )
            event = UploadUpdateEvent(
                request_id=request_id, seq=seq, ts_ms=submitted_ms, payload=payload
            )
            uploads.append((events_topic, event.model_dump_json()))
        encoded = base64.b64encode(prepared.data)
        request = AnalysisRequest(
            request_id=request_id,
            priority=lane,
            submitted_ms=submitted_ms,
            deadline_ms=None
            if submission.deadline_ms is None
            else submitted_ms + submission.deadline_ms,
            image=None if upload.media == "clip" else encoded,
            clip=encoded if upload.media == "clip" else None,
            camera_id=submission.camera_id,
            score_threshold=submission.score_threshold,
            max_items=submission.max_items,
            events_before=len(prepared.phases),
        )
        # Its upload events first: the worker numbers on from them, on the same partition.
        await self._delivered(uploads, request_id)
        topic = ANALYSIS_REQUESTS[lane.rank].name(self.settings)
        await self._delivered([(topic, request.model_dump_json())], request_id)
        upload.finished = time.monotonic()
        return {
            "id": request_id,
            "status_url": f"/api/v1/stream/status/{request_id}",
            "channel": f"analysis:{request_id}",
            "lane": lane.value,
            "media": upload.media,
            "deadline_ms": request.due_ms(),
            "upload": upload.report,
        }

    def _send(self, topic: str, value: str, key: str) -> None:
        assert self.producer is not None
        self.producer.send(topic, value.encode(), key.encode())

    async def _delivered(self, records: list[tuple[str, str]], key: str) -> None:
        """Send ``records`` (topic, value) and wait until Kafka has each of them.

        Only for these: a flush would wait for every message of the server's producer,
        so a flood of low requests' sends would hold an urgent one back.
        """
        producer = self.producer
        assert producer is not None
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[KafkaError | None]] = []
        for topic, value in records:
            future: asyncio.Future[KafkaError | None] = loop.create_future()
            waiting.append(future)

            def report(err: KafkaError | None, _: Message, future: Any = future) -> None:
                # Runs in whichever thread polls: this loop, or a flush at shutdown.
                loop.call_soon_threadsafe(_settle, future, err)

            producer.send(topic, value.encode(), key.encode(), on_delivery=report)
        self._poll_reports()
        try:
            errors = await asyncio.wait_for(asyncio.gather(*waiting), DELIVERY_TIMEOUT_S)
        except TimeoutError:
            raise self.queue.refuse(503, "kafka_unavailable", "Kafka did not take it") from None
        if any(err is not None for err in errors):
            raise self.queue.refuse(503, "kafka_unavailable", "Kafka refused it")

    def _poll_reports(self) -> None:
        """Serve delivery reports in a thread of their own, as confluent-kafka's asyncio
        example does: a blocking poll wakes as soon as a report comes, and costs nothing
        while none does (polling from the loop would be a busy wait per submit)."""
        if self._poller is not None or self.producer is None:
            return
        producer, stopped = self.producer, self._stopped

        def serve() -> None:
            while not stopped.is_set():
                producer.poll(0.1)

        self._poller = threading.Thread(target=serve, name="analyze-deliveries", daemon=True)
        self._poller.start()

    def close(self) -> None:
        """Stop serving delivery reports (the server's shutdown flushes the producer)."""
        self._stopped.set()
        if self._poller is not None:
            self._poller.join(1.0)

    def cancel(self, request_id: str, reason: str = "cancelled by the client") -> bool:
        """Publish a cancel for a request this server knows; False if it does not."""
        tracked = self.book.requests.get(request_id)
        if tracked is None or self.producer is None:
            return False
        cancel = AnalysisCancel(
            request_id=request_id, requested_ms=time.time_ns() // 1_000_000, reason=reason
        )
        self._send(ANALYSIS_CANCEL.name(self.settings), cancel.model_dump_json(), request_id)
        self.producer.poll()
        return True
