"""Frame messages: raw JPEG bytes as the value, the camera id as the key, facts in headers.

Headers (ASCII decimal or text, so any Kafka client reads them):

============================  =====================================================
``kestrel.frame_id``          ``<camera>-<capture ns>``, unique per frame
``kestrel.capture_ts_ns``     capture time, epoch nanoseconds
``kestrel.seq``               the camera's frame counter since its producer started
``kestrel.width``             pixels
``kestrel.height``            pixels
============================  =====================================================
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from kestrel.errors import InvalidMessage

FRAME_ID = "kestrel.frame_id"
CAPTURE_TS_NS = "kestrel.capture_ts_ns"
SEQ = "kestrel.seq"
WIDTH = "kestrel.width"
HEIGHT = "kestrel.height"
CAMERA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_SIDE = 16_384


@dataclass(frozen=True)
class FrameHeaders:
    frame_id: str
    capture_ns: int
    seq: int
    width: int
    height: int

    def encode(self) -> list[tuple[str, bytes]]:
        return [
            (FRAME_ID, self.frame_id.encode()),
            (CAPTURE_TS_NS, str(self.capture_ns).encode()),
            (SEQ, str(self.seq).encode()),
            (WIDTH, str(self.width).encode()),
            (HEIGHT, str(self.height).encode()),
        ]

    @staticmethod
    def make(camera_id: str, capture_ns: int, seq: int, width: int, height: int) -> FrameHeaders:
        return FrameHeaders(f"{camera_id}-{capture_ns}", capture_ns, seq, width, height)


def check_camera_id(camera_id: str) -> str:
    if not CAMERA_ID.match(camera_id):
        raise InvalidMessage(
            "bad_camera_id", f"camera id {camera_id!r} must match {CAMERA_ID.pattern}"
        )
    return camera_id


def parse_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> FrameHeaders:
    """The frame's headers, or :class:`InvalidMessage` (``bad_header``) saying which."""
    found = {name: value for name, value in headers or []}
    values: dict[str, int] = {}
    for name in (CAPTURE_TS_NS, SEQ, WIDTH, HEIGHT):
        raw = found.get(name)
        if raw is None:
            raise InvalidMessage("bad_header", f"header {name} is missing")
        try:
            values[name] = int(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise InvalidMessage(
                "bad_header", f"header {name} is not an integer: {raw!r}"
            ) from None
    frame_id = found.get(FRAME_ID)
    if not frame_id:
        raise InvalidMessage("bad_header", f"header {FRAME_ID} is missing")
    width, height = values[WIDTH], values[HEIGHT]
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise InvalidMessage("bad_header", f"frame size {width}x{height} is out of range")
    return FrameHeaders(
        frame_id.decode(errors="replace"), values[CAPTURE_TS_NS], values[SEQ], width, height
    )
