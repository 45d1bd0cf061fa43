"""An upload's compression: binary search on JPEG or WebP quality down to a size target.

Digest C. The highest quality in [floor, 95] whose encoding fits ``target_bytes`` is
chosen (about log2(56) = 6 encodings). If even the floor does not fit, the floor's
encoding is used and ``target_met`` is false: a quality below the floor would hurt the
detector more than the bytes cost the broker. An image that is already a JPEG or
WebP no larger than the target and the result is kept as it came.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image as PILImage

from kestrel.errors import InvalidMessage

Format = Literal["jpeg", "webp"]
MAX_QUALITY = 95
_EXT = {"jpeg": ".jpg", "webp": ".webp"}
_PARAM = {"jpeg": cv2.IMWRITE_JPEG_QUALITY, "webp": cv2.IMWRITE_WEBP_QUALITY}

Image = np.ndarray[Any, np.dtype[np.uint8]]


@dataclass(frozen=True)
class Compressed:
    data: bytes
    format: str
    quality: int | None  # None: kept as uploaded
    original_bytes: int
    width: int
    height: int
    target_met: bool
    encodings: int  # how many encodings the search tried

    @property
    def compressed_bytes(self) -> int:
        return len(self.data)

    @property
    def ratio(self) -> float:
        """Original size over compressed size (2.0: half the bytes)."""
        return self.original_bytes / max(1, len(self.data))

    def report(self) -> dict[str, Any]:
        return {
            "original_bytes": self.original_bytes,
            "compressed_bytes": self.compressed_bytes,
            "ratio": round(self.ratio, 3),
            "format": self.format,
            "quality": self.quality,
            "width": self.width,
            "height": self.height,
            "target_met": self.target_met,
            "encodings": self.encodings,
        }


def declared_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the file's header alone (Pillow reads no pixels); None if
    it names no image format Pillow knows. A size past Pillow's own bomb limit (about
    179 megapixels) is refused here (``image_too_large``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as header:
                width, height = header.size
                return int(width), int(height)
    except PILImage.DecompressionBombError as exc:
        raise InvalidMessage("image_too_large", f"its header declares: {exc}") from None
    except (OSError, ValueError):
        return None


def decode_image(data: bytes, max_pixels: int) -> Image:
    """A BGR image from an uploaded file; :class:`InvalidMessage` if it is not one.

    The size its header declares is checked before any pixel is decoded: a small file
    can declare a huge image (a decompression bomb) that would take the process's memory.
    """
    if not data:
        raise InvalidMessage("empty_upload", "the upload is empty")
    size = declared_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        width, height = size
        raise InvalidMessage(
            "image_too_large", f"{width}x{height} pixels > the limit of {max_pixels} pixels"
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise InvalidMessage("not_an_image", "the upload does not decode as an image")
    height, width = image.shape[:2]
    if height * width > max_pixels:
        raise InvalidMessage(
            "image_too_large", f"{width}x{height} pixels > the limit of {max_pixels} pixels"
        )
    return np.asarray(image, dtype=np.uint8)


def encode(image: Image, fmt: Format, quality: int) -> bytes:
    ok, buffer = cv2.imencode(_EXT[fmt], image, [_PARAM[fmt], quality])
    if not ok:  # pragma: no cover - OpenCV encodes any 8-bit BGR image
        raise InvalidMessage("encode_failed", f"could not encode as {fmt} q{quality}")
    return bytes(buffer)


def sniff(data: bytes) -> str | None:
    """jpeg, webp or None, from the file's magic bytes."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def compress(
    data: bytes,
    image: Image,
    target_bytes: int,
    floor: int,
    fmt: Format = "jpeg",
) -> Compressed:
    """The upload, compressed to at most ``target_bytes`` if a quality >= ``floor`` can."""
    height, width = image.shape[:2]
    if len(data) <= target_bytes and sniff(data) is not None:
        return Compressed(data, sniff(data) or fmt, None, len(data), width, height, True, 0)
    low, high = floor, MAX_QUALITY
    best: tuple[int, bytes] | None = None
    encodings = 0
    while low <= high:  # the highest quality that fits
        quality = (low + high) // 2
        encoded = encode(image, fmt, quality)
        encodings += 1
        if len(encoded) <= target_bytes:
            best, low = (quality, encoded), quality + 1
        else:
            high = quality - 1
    if best is None:
        floor_encoded = encode(image, fmt, floor)
        return Compressed(floor_encoded, fmt, floor, len(data), width, height, False, encodings + 1)
    return Compressed(best[1], fmt, best[0], len(data), width, height, True, encodings)
