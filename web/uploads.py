"""The upload queue (digest C): an upload checked and prepared, then submitted or staged.

At most ``KESTREL_UPLOAD_CONCURRENCY`` uploads are prepared at once, in a thread pool
(decoding, encoding and reading a clip's header block); the others wait for a slot in
their priority's order (digest C: urgent first, then high, normal, low; a flood of low
uploads never holds an urgent one back). An image is decoded (its
declared size checked first) and compressed by the quality search; a clip
(:mod:`kestrel.ondemand.clip`) has its header checked (length, frame size) and goes
on as it came: the inference worker samples it. Everything that can refuse an upload
does so here, before anything is published, so a refused upload leaves nothing behind.

A prepared upload is either submitted at once (``POST /api/v1/stream/analyze`` with a
file) or staged (``POST /api/v1/uploads``) for a later submit by its id (the same
route's ``upload_id`` field, or the WebSocket's ``generate``): staged uploads are kept
``STAGED_S`` and at most ``STAGED_MAX`` (their bytes, ``STAGED_BYTES``), each used once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from kestrel.errors import InvalidMessage
from kestrel.ondemand.clip import probe, sniff_clip
from kestrel.ondemand.compress import compress, decode_image
from kestrel.settings import Settings

RETENTION_S = 30.0
HISTORY = 1_000
STAGED_S = 300.0
STAGED_MAX = 64
STAGED_BYTES = 128 * 1024 * 1024


class UploadRefused(Exception):
    """An upload that is refused before anything of it is published (an HTTP 4xx)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message}


@dataclass
class Upload:
    """What ``/api/v1/status/upload/{id}`` shows of one upload."""

    upload_id: str
    media: Literal["image", "clip"] = "image"
    phase: str = "received"
    report: dict[str, Any] = field(default_factory=dict)
    lane: str | None = None  # once submitted
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def status(self) -> dict[str, Any]:
        return {
            "id": self.upload_id,
            "media": self.media,
            "lane": self.lane,
            "phase": self.phase,
            **self.report,
        }


@dataclass
class Prepared:
    """An upload ready to submit: its bytes and the phases it went through."""

    upload: Upload
    data: bytes  # the compressed image, or the clip as it came
    phases: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    received_ms: int = 0  # epoch ms, when the upload came

    @property
    def upload_id(self) -> str:
        return self.upload.upload_id

    def phase(self, phase: str, report: dict[str, Any] | None = None) -> None:
        self.upload.phase = phase
        if report is not None:
            self.upload.report = report
        self.phases.append((phase, dict(self.upload.report)))


class PrioritySlots:
    """At most ``n`` holders at once; the others get a slot by rank (lowest first),
    then in the order they came."""

    def __init__(self, n: int) -> None:
        self.free = n
        self.waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def hold(self, rank: int) -> AsyncIterator[None]:
        if self.free > 0 and not self.waiting:
            self.free -= 1
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self.waiting, (rank, next(self._arrivals), future))
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():  # given, then cancelled
                    self._release()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self.waiting:
            _, _, future = heapq.heappop(self.waiting)
            if not future.done():  # a waiter that was cancelled is skipped
                future.set_result(None)
                return
        self.free += 1


class UploadQueue:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.slots = PrioritySlots(settings.upload_concurrency)
        self.pool = ThreadPoolExecutor(settings.upload_concurrency, thread_name_prefix="upload")
        self.uploads: OrderedDict[str, Upload] = OrderedDict()
        self.staged: OrderedDict[str, Prepared] = OrderedDict()
        self.refused: dict[str, int] = {}

    def refuse(self, status: int, code: str, message: str) -> UploadRefused:
        self.refused[code] = self.refused.get(code, 0) + 1
        return UploadRefused(status, code, message)

    async def prepare(self, data: bytes, rank: int = 2) -> Prepared:
        """Check and prepare an image or a clip, in a slot by ``rank`` (its lane's: 0 is
        urgent); :class:`UploadRefused` says why not."""
        received_ms = time.time_ns() // 1_000_000
        if not data:
            raise self.refuse(400, "empty_upload", "the upload is empty")
        clip = sniff_clip(data) is not None
        limit = self.settings.clip_max_bytes if clip else self.settings.upload_max_bytes
        if len(data) > limit:
            what = "clip" if clip else "upload"
            raise self.refuse(413, f"{what}_too_large", f"{len(data)} bytes > {limit}")
        upload = self._upload(uuid.uuid4().hex, "clip" if clip else "image")
        prepared = Prepared(upload, data, received_ms=received_ms)
        prepared.phase("received")
        prepared.phase("waiting")
        async with self.slots.hold(rank):
            return await self._prepare(prepared, clip)

    async def _prepare(self, prepared: Prepared, clip: bool) -> Prepared:
        loop = asyncio.get_running_loop()
        settings, data = self.settings, prepared.data
        try:
            if clip:
                info = await loop.run_in_executor(
                    self.pool, probe, data, settings.clip_max_s, settings.upload_max_pixels
                )
            else:
                image = await loop.run_in_executor(
                    self.pool, decode_image, data, settings.upload_max_pixels
                )
        except InvalidMessage as exc:
            self.uploads.pop(prepared.upload_id, None)  # refused: nothing of it stays
            too_big = exc.reason in ("image_too_large", "clip_too_long")
            raise self.refuse(413 if too_big else 415, exc.reason, exc.detail) from None
        if clip:  # nothing to compress: the worker samples it
            prepared.phase("checked", {"original_bytes": len(data), **info.report()})
            return prepared
        prepared.phase("compressing")
        compressed = await loop.run_in_executor(
            self.pool,
            compress,
            data,
            image,
            settings.upload_target_bytes,
            settings.upload_quality_floor,
            settings.upload_format,
        )
        prepared.data = compressed.data
        prepared.phase("compressed", compressed.report())
        return prepared

    def _upload(self, upload_id: str, media: Literal["image", "clip"]) -> Upload:
        upload = self.uploads[upload_id] = Upload(upload_id, media)
        horizon = time.monotonic() - RETENTION_S
        for key, old in list(self.uploads.items()):
            if (old.finished is not None and old.finished < horizon) or len(self.uploads) > HISTORY:
                del self.uploads[key]
        return upload

    def stage(self, prepared: Prepared) -> dict[str, Any]:
        """Keep a prepared upload for a submit by its id; the oldest go past the caps."""
        self.staged[prepared.upload_id] = prepared
        horizon = time.monotonic() - STAGED_S
        while self.staged and (
            len(self.staged) > STAGED_MAX
            or sum(len(p.data) for p in self.staged.values()) > STAGED_BYTES
            or next(iter(self.staged.values())).upload.created < horizon
        ):
            _, old = self.staged.popitem(last=False)
            old.upload.phase, old.upload.finished = "expired", time.monotonic()
        return {
            "upload_id": prepared.upload_id,
            "media": prepared.upload.media,
            "status_url": f"/api/v1/status/upload/{prepared.upload_id}",
            "expires_s": STAGED_S,
            **prepared.upload.report,
        }

    def take(self, upload_id: str) -> Prepared:
        """A staged upload, once; 404 if there is none of that id (used, or expired)."""
        prepared = self.staged.pop(upload_id, None)
        if prepared is None or prepared.upload.created < time.monotonic() - STAGED_S:
            raise self.refuse(404, "unknown_upload", f"no staged upload {upload_id!r}")
        return prepared

    def status(self) -> dict[str, Any]:
        active = [u for u in self.uploads.values() if u.finished is None]
        return {
            "concurrency": self.settings.upload_concurrency,
            "preparing": sum(1 for u in active if u.phase == "compressing"),
            "waiting": sum(1 for u in active if u.phase in ("received", "waiting")),
            "staged": len(self.staged),
            "recent": [u.status() for u in list(self.uploads.values())[-20:]],
            "refused": dict(self.refused),
        }
