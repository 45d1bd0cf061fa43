"""The dashboard's Starlette app: WebSocket, Server-Sent Events, REST, Prometheus.

It runs as its own process (``kestrel-web``), not inside a Faust worker: it must
serve while workers rebalance and recover (Faust's ASGI hosting serves only after
table recovery), it scales with viewers rather than with partitions, and it needs
every partition of the output topics, which a consumer group would split. Its state
is the hot cache (:mod:`web.live`), filled by one group-less consumer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from kestrel.camera.frame_cache import FrameCache
from kestrel.collectors.publisher import BatchingPublisher
from kestrel.producer import KestrelProducer
from kestrel.schemas import SampleColumns
from kestrel.schemas.analysis import AnalysisEvent
from kestrel.settings import Settings
from kestrel.topics import ANALYSIS_EVENTS, METRICS_UI
from web.access import AUTHENTICATED, Access, AccessMiddleware
from web.analyze import Analyze, parse_submission
from web.backpressure import MAX_HZ
from web.deadlines import ClientStalled
from web.feed import HotCacheFeed
from web.hub import Client, Hub
from web.live import LiveCache
from web.protocol import (
    VERSION,
    ProtocolError,
    channels_of,
    error_message,
    parse_client,
    server_message,
)
from web.uploads import UploadRefused
from web.ux import UxMerger

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")

HEARTBEAT_S = 15.0  # the server pings this often; silence for twice as long closes
HELLO_TIMEOUT_S = 10.0
MAX_MESSAGES_PER_S = 50  # per client; beyond it the server stops reading it for the second
FLOOD_CLOSE_AFTER_S = 5  # seconds in a row over the limit before the connection is closed
STALLED = 4009  # the close code of a client that took no data for web_stall_s
UX_PAST_MS = 10_000  # a page's ux samples are clamped into [now - this, now]


class Dashboard:
    """Everything the routes share: settings, hub, cache, frames, feed, counters."""

    def __init__(self, settings: Settings, follow_kafka: bool = True) -> None:
        self.settings = settings
        self.access = Access(settings)
        self.hub = Hub(stall_s=settings.web_stall_s)
        self.cache = LiveCache(
            self.hub,
            round(settings.window_grace_s * 1000),
            settings.max_sources,
            settings.max_fields,
        )
        self.frames = FrameCache()
        self.feed = HotCacheFeed(settings, self.cache, self.frames) if follow_kafka else None
        self.producer = KestrelProducer(settings) if follow_kafka else None
        publisher = (
            BatchingPublisher(self.producer, METRICS_UI.name(settings), "ui")
            if self.producer is not None
            else None
        )
        self.ux = UxMerger(publisher)
        self.analyze = Analyze(settings, self.hub, self.producer)
        if self.feed is not None:  # the last 10 minutes: any request still worth showing
            self.feed.follow(ANALYSIS_EVENTS, 600_000, self._add_analysis_event)
        self._tasks: list[asyncio.Task[None]] = []
        self.process = psutil.Process()
        self.started = time.time()
        self.refused = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()  # for callers in other threads (tests)
        if self.feed is not None:
            await self.feed.start()
        self._tasks = [
            asyncio.create_task(self._flush_ux(), name="ux-flush"),
            asyncio.create_task(self._publish_system(), name="system-status"),
            asyncio.create_task(self.hub.deadlines.run(), name="write-deadlines"),
        ]

    def _add_analysis_event(self, value: bytes) -> None:
        self.analyze.book.add(AnalysisEvent.model_validate_json(value).root)

    async def _flush_ux(self) -> None:
        while True:
            await asyncio.sleep(0.1)  # the UX slots' publishing cadence
            self.ux.flush(int(time.time() * 1000))

    async def _publish_system(self) -> None:
        """The ``system`` channel: the server's status, each second, to who wants it."""
        while True:
            await asyncio.sleep(1.0)
            if self.hub.wants("system"):
                self.hub.publish("system", "status", self.status_streaming())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.analyze.close()
        if self.producer is not None:
            self.producer.flush(5)
        for client in list(self.hub.clients.values()):
            await self.hub.disconnect(client)
        if self.feed is not None:
            await self.feed.stop()

    # WebSocket ---------------------------------------------------------------------------
    async def websocket(self, websocket: WebSocket) -> None:
        await websocket.accept()

        async def send(raw: bytes) -> None:
            # Every write has the same deadline: a client that takes nothing for
            # web_stall_s costs no more than that (ClientStalled ends its connection).
            await self.hub.deadlines.write(websocket.send_text(raw.decode()))

        async def close(code: int, reason: str) -> None:
            # Not cut short: on a stalled socket the close frame cannot go out, and the
            # websockets library then aborts the TCP connection after its close timeout.
            with contextlib.suppress(Exception):  # its socket may be gone already
                await websocket.close(code, reason[:120])

        try:
            authenticated = await self._hello(websocket)
        except ProtocolError as exc:
            with contextlib.suppress(ClientStalled):
                await send(error_message(exc))
            await close(4001 if exc.code == "unauthorized" else 4002, exc.message)
            return
        try:
            client = self.hub.connect(send, close)
        except ConnectionRefusedError as exc:
            with contextlib.suppress(ClientStalled):
                await send(error_message(ProtocolError("server_full", str(exc), True)))
            await close(1013, "server full")
            return
        client.authenticated = authenticated
        welcome = {
            "client_id": client.client_id,
            "heartbeat_s": HEARTBEAT_S,
            "max_hz": MAX_HZ,  # per (channel, key)
            "channels": [
                "cameras",
                "camera:<id>",
                "metrics:<source>",
                "alerts",
                "analytics",
                "system",
            ],
        }
        try:
            await send(server_message("welcome", welcome))
            await self._converse(websocket, client, send)
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass  # it left, or the hub closed it (stalled) while it was still talking
        except ClientStalled as exc:
            await close(STALLED, f"stalled: {exc}")
        finally:
            await self.hub.disconnect(client)

    async def _hello(self, websocket: WebSocket) -> bool:
        """Wait for the hello; whether the connection is authenticated (or refuse it)."""
        try:
            raw = await asyncio.wait_for(websocket.receive_text(), HELLO_TIMEOUT_S)
        except TimeoutError:
            raise ProtocolError("hello_timeout", "send hello first", recoverable=False) from None
        message = parse_client(raw)
        if message.type != "hello":
            raise ProtocolError("hello_first", "the first message must be hello", False)
        # The handshake's cookie, header or query parameter, or the hello's token.
        if websocket.scope["state"].get(AUTHENTICATED, False):
            return True
        given = message.payload.get("token")
        if self.access.valid(given if isinstance(given, str) else None):
            return True
        if self.access.required:
            raise ProtocolError("unauthorized", "a valid token is required", recoverable=False)
        return False

    async def _converse(self, websocket: WebSocket, client: Client, send: Any) -> None:
        last_heard = time.monotonic()
        window_start, in_window, flooded_s = time.monotonic(), 0, 0
        while True:
            try:
                raw = await asyncio.wait_for(websocket.receive_text(), HEARTBEAT_S)
            except TimeoutError:
                if time.monotonic() - last_heard > 2 * HEARTBEAT_S:
                    timeout = ProtocolError("heartbeat_timeout", "no pong", recoverable=False)
                    await send(error_message(timeout))
                    await websocket.close(code=4008)
                    return
                await send(server_message("ping", {"t": time.time()}))
                continue
            last_heard = now = time.monotonic()
            if now - window_start >= 1.0:  # a second that stayed within the limit
                window_start, in_window, flooded_s = now, 0, 0
            in_window += 1
            if in_window > MAX_MESSAGES_PER_S:
                self.refused += 1
                flooded_s += 1
                if flooded_s > FLOOD_CLOSE_AFTER_S:
                    flood = ProtocolError("flood", "too many messages", recoverable=False)
                    await send(error_message(flood))
                    await websocket.close(code=1008)
                    return
                limit = f"at most {MAX_MESSAGES_PER_S} messages a second"
                await send(error_message(ProtocolError("rate_limited", limit)))
                # Read nothing more from it this second: what it sends meanwhile waits
                # in its own socket (TCP pushes back on it), not in the server's time.
                await asyncio.sleep(window_start + 1.0 - now)
                window_start, in_window = time.monotonic(), 0
                continue
            await self._handle(raw, client, send)

    async def _handle(self, raw: str, client: Client, send: Any) -> None:
        correlation = None
        try:
            message = parse_client(raw)
            correlation = message.id
            if message.type == "ping":
                await send(server_message("pong", message.payload, correlation_id=correlation))
            elif message.type == "subscribe":
                channels = channels_of(message)
                await send(
                    server_message("subscribed", {"channels": channels}, correlation_id=correlation)
                )
                for channel in channels:
                    # Through the client's own buffer, like any update; a channel it
                    # already has costs nothing more (no second backfill).
                    if channel not in client.subscriptions:
                        self.hub.subscribe(client, channel, self.backfill(channel))
            elif message.type == "unsubscribe":
                channels = channels_of(message)
                for channel in channels:
                    self.hub.unsubscribe(client, channel)
                await send(
                    server_message(
                        "unsubscribed", {"channels": channels}, correlation_id=correlation
                    )
                )
            elif message.type == "ux":
                if not client.authenticated:
                    raise ProtocolError("unauthorized", "ux reports need an authenticated page")
                try:
                    samples = SampleColumns.model_validate(message.payload)
                except ValueError as exc:
                    raise ProtocolError("bad_message", f"ux: {exc}") from None
                now = int(time.time() * 1000)
                # The server's clock decides when a page's frames were: a page cannot
                # stamp samples into the future, nor far into the past.
                clamped = [min(max(int(t), now - UX_PAST_MS), now) for t in samples.timestamp]
                self.ux.add(clamped, samples.data)
            elif message.type == "generate":
                await send(await self._generate(message.payload, client, correlation))
            elif message.type == "cancel":
                request_id = str(message.payload.get("id", ""))
                if not self.analyze.cancel(request_id):
                    raise ProtocolError("unknown_request", f"no request {request_id!r} here")
                answer = {"id": request_id, "state": "cancelling"}
                await send(server_message("cancelling", answer, correlation_id=correlation))
            elif message.type == "hello":
                raise ProtocolError("already_hello", "hello was already sent")
            # pong: nothing to answer; hearing it reset the heartbeat
        except ProtocolError as exc:
            await send(error_message(exc, correlation))

    async def _generate(
        self, payload: dict[str, Any], client: Client, correlation: str | None
    ) -> bytes:
        """Digest D's ``generate``: a staged upload's id (``upload_id``, from ``POST
        /api/v1/uploads``) or a small inline image (``image``, base64), submitted like
        an upload; the client is subscribed to the request's channel at once."""
        try:
            params = payload.get("params") or {}
            if not isinstance(params, dict):
                raise UploadRefused(400, "bad_field", "params: an object")
            submission = parse_submission({k: str(v) for k, v in params.items() if v is not None})
            upload_id = payload.get("upload_id")
            if upload_id is not None:
                accepted = await self.analyze.submit_staged(str(upload_id), submission)
            else:
                image = base64.b64decode(str(payload.get("image", "")), validate=True)
                accepted = await self.analyze.submit(image, submission)
        except UploadRefused as exc:
            raise ProtocolError(exc.code, exc.message) from None
        except ValueError:  # binascii.Error
            raise ProtocolError("bad_field", "image: base64 of an image file") from None
        channel = accepted["channel"]
        if channel not in client.subscriptions:
            self.hub.subscribe(client, channel, self.backfill(channel))
        return server_message("accepted", accepted, correlation_id=correlation)

    def backfill(self, channel: str) -> dict[str, Any]:
        if channel == "system":
            return self.status_streaming()
        if channel.startswith("analysis:"):
            return self.analyze.book.backfill(channel.removeprefix("analysis:"))
        return self.cache.backfill(channel)

    # Server-Sent Events ------------------------------------------------------------------
    async def sse(self, request: Request) -> Response:
        raw_channels = request.query_params.get("channels", "")
        try:
            channels = channels_of(
                parse_client(
                    orjson.dumps(
                        {"type": "subscribe", "payload": {"channels": raw_channels.split(",")}}
                    )
                )
            )
        except ProtocolError as exc:
            return JSONResponse({"code": exc.code, "message": exc.message}, status_code=400)
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=256)
        stalled = asyncio.Event()

        async def send(raw: bytes) -> None:
            await self.hub.deadlines.write(queue.put(raw))

        async def close(code: int, reason: str) -> None:
            stalled.set()

        client = self.hub.connect(send, close)
        for channel in dict.fromkeys(channels):
            self.hub.subscribe(client, channel, self.backfill(channel))

        async def events() -> AsyncIterator[bytes]:
            try:
                while True:
                    if stalled.is_set() and queue.empty():
                        return  # the hub gave up on this client: end the response
                    try:
                        raw = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield b"data: " + raw + b"\n\n"
            finally:
                await self.hub.disconnect(client)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    # REST ----------------------------------------------------------------------------------
    def status_streaming(self) -> dict[str, Any]:
        feed = self.feed
        return {
            "protocol": VERSION,
            "sources": self.cache.sources(),
            "cameras": sorted(self.cache.results),
            "active_alerts": len(self.cache.active_alerts),
            "feed": {
                "records": feed.records if feed else 0,
                "skipped": feed.skipped if feed else 0,
                "caught_up": feed.caught_up.is_set() if feed else False,
                "failure": feed.failure if feed else None,
            },
            "frames_cached": len(self.frames),
            "websocket": self.hub.stats(),
            "server": {
                "cpu_percent": self.process.cpu_percent(None),
                "rss_mb": self.process.memory_info().rss / 2**20,
            },
        }


def create_app(settings: Settings, follow_kafka: bool = True) -> Starlette:
    """The dashboard app; ``follow_kafka=False`` for tests of the protocol alone."""
    dash = Dashboard(settings, follow_kafka)
    process = psutil.Process()
    registry = CollectorRegistry()
    clients_gauge = Gauge("kestrel_web_clients", "Connected clients", registry=registry)
    buffered = Gauge(
        "kestrel_web_buffered_bytes", "Bytes waiting in client buffers", registry=registry
    )
    published = Gauge("kestrel_web_updates_published", "Updates published", registry=registry)
    records = Gauge(
        "kestrel_web_feed_records", "Kafka records read into the cache", registry=registry
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await dash.start()
        app.state.dashboard = dash
        yield
        await dash.stop()

    async def system(request: Request) -> Response:
        memory = process.memory_info().rss / 2**20
        return JSONResponse(
            {
                "uptime_s": time.time() - dash.started,
                "cpu_percent": process.cpu_percent(None),
                "rss_mb": memory,
                "host_cpu_percent": psutil.cpu_percent(None),
            }
        )

    async def streaming(request: Request) -> Response:
        return JSONResponse(dash.status_streaming())

    async def websocket_status(request: Request) -> Response:
        return JSONResponse({**dash.hub.stats(), "refused_messages": dash.refused})

    async def cameras(request: Request) -> Response:
        return JSONResponse(dash.cache.backfill("cameras"))

    async def camera_latest(request: Request) -> Response:
        camera_id = request.path_params["camera_id"]
        result = dash.cache.results.get(camera_id)
        if result is None:
            return JSONResponse({"error": f"no result for camera {camera_id!r}"}, 404)
        return Response(result.model_dump_json(by_alias=True), media_type="application/json")

    async def camera_frame(request: Request) -> Response:
        frame = dash.frames.latest_frame(request.path_params["camera_id"])
        if frame is None:
            return JSONResponse({"error": "no frame cached for this camera"}, 404)
        return Response(frame.jpeg, media_type="image/jpeg", headers={"X-Frame-Id": frame.frame_id})

    async def frame_by_id(request: Request) -> Response:
        frame = dash.frames.get(request.path_params["frame_id"])
        if frame is None:
            return JSONResponse({"error": "frame not in the cache"}, 404)
        return Response(frame.jpeg, media_type="image/jpeg")

    async def aggregates(request: Request) -> Response:
        source = request.path_params["source"]
        field = request.query_params.get("field")
        window = request.query_params.get("window", "1s")
        since = request.query_params.get("since_ms")
        if field is None:
            return JSONResponse({"error": "query parameter field is required"}, 400)
        try:
            rows = dash.cache.aggregates(source, field, window, int(since) if since else None)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse([r.model_dump() for r in rows])

    async def temporal(request: Request) -> Response:
        """Every watched field's regime and matches; ``?source=`` (glob-free) narrows it."""
        source = request.query_params.get("source")
        rows = [
            a.model_dump(mode="json")
            for key, a in sorted(dash.cache.temporal.items())
            if source is None or a.source == source
        ]
        return JSONResponse(rows)

    async def temporal_field(request: Request) -> Response:
        key = f"{request.path_params['source']}|{request.path_params['field']}"
        found = dash.cache.temporal.get(key)
        if found is None:
            return JSONResponse({"error": f"no temporal analysis of {key!r}"}, 404)
        return Response(found.model_dump_json(), media_type="application/json")

    largest = max(settings.upload_max_bytes, settings.clip_max_bytes)

    async def read_form(request: Request, need_file: bool) -> tuple[bytes | None, dict[str, str]]:
        """A multipart form's ``file`` (an image or a clip) and its text fields."""
        length = int(request.headers.get("content-length") or 0)
        if length > largest + 64 * 1024:  # refused before it is read
            raise UploadRefused(413, "upload_too_large", f"{length} bytes > {largest}")
        async with request.form(max_files=1, max_fields=10) as form:
            upload = form.get("file")
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            if upload is None or isinstance(upload, str):
                if need_file:
                    raise UploadRefused(400, "no_file", "send an image or a clip as 'file'")
                return None, fields
            return await upload.read(largest + 1), fields

    async def analyze(request: Request) -> Response:
        """``POST /api/v1/stream/analyze`` (multipart: ``file``, or ``upload_id`` of a
        staged upload, and the request's fields)."""
        try:
            data, fields = await read_form(request, need_file=False)
            submission = parse_submission(fields)
            if data is not None:
                accepted = await dash.analyze.submit(data, submission)
            elif fields.get("upload_id"):
                accepted = await dash.analyze.submit_staged(fields["upload_id"], submission)
            else:
                message = "send an image or a clip as 'file', or a staged 'upload_id'"
                raise UploadRefused(400, "no_file", message)
        except UploadRefused as exc:
            return JSONResponse(exc.body(), exc.status)
        return JSONResponse(accepted, 202)

    async def stage_upload(request: Request) -> Response:
        """``POST /api/v1/uploads`` (multipart ``file``): checked and prepared, kept for
        a submit by its id (this route, or the WebSocket's ``generate``)."""
        try:
            data, _ = await read_form(request, need_file=True)
            prepared = await dash.analyze.queue.prepare(data or b"")
        except UploadRefused as exc:
            return JSONResponse(exc.body(), exc.status)
        return JSONResponse(dash.analyze.queue.stage(prepared), 201)

    async def analysis_status(request: Request) -> Response:
        tracked = dash.analyze.book.requests.get(request.path_params["request_id"])
        if tracked is None:
            return JSONResponse({"error": "unknown_request"}, 404)
        return JSONResponse(tracked.status())

    async def analysis_cancel(request: Request) -> Response:
        request_id = request.path_params["request_id"]
        if not dash.analyze.cancel(request_id):
            return JSONResponse({"error": "unknown_request"}, 404)
        return JSONResponse({"id": request_id, "state": "cancelling"}, 202)

    async def upload_queue(request: Request) -> Response:
        return JSONResponse(dash.analyze.queue.status())

    async def upload_status(request: Request) -> Response:
        upload = dash.analyze.queue.uploads.get(request.path_params["upload_id"])
        if upload is None:
            return JSONResponse({"error": "unknown_upload"}, 404)
        return JSONResponse(upload.status())

    async def dashboard_status(request: Request) -> Response:
        return JSONResponse(
            {
                "websocket": dash.hub.stats(),
                "requests": dash.analyze.book.counts(),
                "upload_queue": dash.analyze.queue.status(),
                "sources": len(dash.cache.sources()),
                "cameras": len(dash.cache.results),
                "active_alerts": len(dash.cache.active_alerts),
            }
        )

    async def metrics(request: Request) -> Response:
        stats = dash.hub.stats()
        clients_gauge.set(float(stats["clients"]))  # type: ignore[arg-type]
        buffered.set(float(stats["buffered_bytes"]))  # type: ignore[arg-type]
        published.set(float(stats["published"]))  # type: ignore[arg-type]
        records.set(float(dash.feed.records if dash.feed else 0))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def healthz(request: Request) -> Response:
        feed = dash.feed
        if feed is None:
            return JSONResponse({"ok": True})
        # Healthy: the backlog is read and the consumer still follows the topics; a
        # feed that died would leave the page showing a frozen picture.
        failure = feed.failure
        ok = feed.caught_up.is_set() and failure is None
        body: dict[str, object] = {"ok": ok, "caught_up": feed.caught_up.is_set()}
        if failure is not None:
            body["feed"] = failure
        return JSONResponse(body, status_code=200 if ok else 503)

    routes = [
        WebSocketRoute("/ws", dash.websocket),
        Route("/api/v1/stream", dash.sse),
        Route("/api/v1/status/system", system),
        Route("/api/v1/status/streaming", streaming),
        Route("/api/v1/status/websocket", websocket_status),
        Route("/api/v1/status/upload-queue", upload_queue),
        Route("/api/v1/status/upload/{upload_id}", upload_status),
        Route("/api/v1/status/dashboard", dashboard_status),
        Route("/api/v1/stream/analyze", analyze, methods=["POST"]),
        Route("/api/v1/uploads", stage_upload, methods=["POST"]),
        Route("/api/v1/stream/status/{request_id}", analysis_status),
        Route("/api/v1/stream/{request_id}", analysis_cancel, methods=["DELETE"]),
        Route("/api/v1/cameras", cameras),
        Route("/api/v1/cameras/{camera_id}/latest", camera_latest),
        Route("/api/v1/cameras/{camera_id}/frame.jpg", camera_frame),
        Route("/api/v1/frames/{frame_id}.jpg", frame_by_id),
        Route("/api/v1/metrics/{source}/aggregates", aggregates),
        Route("/api/v1/analytics/temporal", temporal),
        Route("/api/v1/analytics/temporal/{source}/{field}", temporal_field),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/", page),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(AccessMiddleware, access=dash.access)]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.dashboard = dash
    return app
