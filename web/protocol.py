"""Kestrel's WebSocket protocol, version 1 (documented in web/PROTOCOL.md).

Every message is one JSON object with ``v`` (the protocol version), ``type`` and
``payload``; a client may add an ``id``, which the server echoes as
``correlation_id`` in its answer. Server updates carry their ``channel`` and a
per-channel ``seq`` (1, 2, ... per connection: the updates sent, without gaps).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

VERSION = 1
CHANNEL = re.compile(
    r"^(cameras|alerts|system|analytics|camera:[A-Za-z0-9._-]{1,64}|metrics:[A-Za-z0-9:._/-]{1,110}"
    r"|analysis:[A-Za-z0-9][A-Za-z0-9._:-]{0,63})$"
)
MAX_CLIENT_MESSAGE_BYTES = 16 * 1024


class ClientMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    type: Literal["hello", "subscribe", "unsubscribe", "ping", "pong", "ux", "generate", "cancel"]
    id: str | None = Field(None, max_length=64)
    payload: dict[str, Any] = {}


class ProtocolError(Exception):
    """A client message the server refuses; sent back as an ``error`` message."""

    def __init__(self, code: str, message: str, recoverable: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.recoverable = recoverable


def parse_client(raw: str | bytes) -> ClientMessage:
    """One client message, or :class:`ProtocolError` saying what is wrong with it."""
    if len(raw) > MAX_CLIENT_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"messages are at most {MAX_CLIENT_MESSAGE_BYTES} bytes")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc}") from None
    if isinstance(data, dict) and data.get("v", VERSION) != VERSION:
        raise ProtocolError(
            "unsupported_version", f"this server speaks v{VERSION}", recoverable=False
        )
    try:
        return ClientMessage.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise ProtocolError("bad_message", f"{where}: {first['msg']}") from None


def channels_of(message: ClientMessage) -> list[str]:
    """The channels a subscribe/unsubscribe names, each checked."""
    channels = message.payload.get("channels")
    if not isinstance(channels, list) or not channels:
        raise ProtocolError("bad_message", "payload.channels must be a non-empty list")
    for channel in channels:
        if not isinstance(channel, str) or not CHANNEL.match(channel):
            raise ProtocolError(
                "unknown_channel",
                f"{channel!r} is not a channel (cameras, camera:<id>, metrics:<source>, "
                "alerts, analytics, system, analysis:<request id>)",
            )
    return channels


def server_message(
    type_: str,
    payload: Any,
    *,
    channel: str | None = None,
    seq: int | None = None,
    key: str | None = None,
    correlation_id: str | None = None,
) -> bytes:
    message: dict[str, Any] = {"v": VERSION, "type": type_, "payload": payload}
    if channel is not None:
        message["channel"] = channel
    if seq is not None:
        message["seq"] = seq
    if key is not None:
        message["key"] = key
    if correlation_id is not None:
        message["correlation_id"] = correlation_id
    return orjson.dumps(message)


def error_message(error: ProtocolError, correlation_id: str | None = None) -> bytes:
    payload = {"code": error.code, "message": error.message, "recoverable": error.recoverable}
    return server_message("error", payload, correlation_id=correlation_id)
