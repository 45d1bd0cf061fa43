"""Send a rejected message to the dead-letter topic with why and where it failed."""

from __future__ import annotations

import logging

import faust

from faust_app import app, settings
from kestrel.deadletter import DeadLetter
from kestrel.errors import InvalidMessage
from kestrel.topics import DEADLETTER, faust_topic

log = logging.getLogger(__name__)

deadletter_topic = faust_topic(app, settings, DEADLETTER)


async def send_to_dead_letter(
    event: faust.EventT[bytes], error: InvalidMessage, stage: str
) -> None:
    """Publish the original key and value untouched, the context in headers."""
    message = event.message
    letter = DeadLetter(
        reason=error.reason,
        error=error.detail,
        stage=stage,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
    )
    log.warning(
        "dead letter from %s[%d]@%d (%s): %s",
        message.topic,
        message.partition,
        message.offset,
        stage,
        error,
    )
    await deadletter_topic.send(key=message.key, value=message.value, headers=letter.headers())
