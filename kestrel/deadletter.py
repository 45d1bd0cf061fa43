"""The dead-letter convention: the original message, untouched, plus why it failed.

A message that a stage cannot process is published to ``<namespace>.deadletter``
with its original key, value and headers (nothing is re-encoded, so nothing is lost,
JPEG bytes included) and these headers added, as Kafka Connect's dead-letter queues do:

=====================  =========================================================
``kestrel.reason``     short code: ``bad_json``, ``missing_field`` ...
``kestrel.error``      what exactly was wrong, for a person
``kestrel.stage``      the agent that rejected it
``kestrel.topic``      where the message was read
``kestrel.partition``  its partition
``kestrel.offset``     its offset
=====================  =========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

HEADER_PREFIX = "kestrel."


@dataclass(frozen=True)
class DeadLetter:
    """Why and where one message was rejected."""

    reason: str
    error: str
    stage: str
    topic: str
    partition: int
    offset: int

    @classmethod
    def header_names(cls) -> set[str]:
        return {HEADER_PREFIX + name for name in cls.__dataclass_fields__}

    def headers(self) -> list[tuple[str, bytes]]:
        return [(HEADER_PREFIX + name, str(value).encode()) for name, value in vars(self).items()]

    @classmethod
    def from_headers(cls, headers: Mapping[str, bytes]) -> DeadLetter:
        """Read the context back, e.g. in a consumer that replays dead letters."""

        def get(name: str) -> str:
            return headers[HEADER_PREFIX + name].decode()

        return cls(
            reason=get("reason"),
            error=get("error"),
            stage=get("stage"),
            topic=get("topic"),
            partition=int(get("partition")),
            offset=int(get("offset")),
        )
