"""Send a rejected message to the dead-letter topic with why and where it failed."""

from __future__ import annotations

import logging

import faust

from faust_app import app, settings
from kestrel.deadletter import DeadLetter
from kestrel.errors import InvalidMessage
from kestrel.producer import KestrelProducer
from kestrel.topics import DEADLETTER, faust_topic

log = logging.getLogger(__name__)

# Declared so the worker creates it with the catalogue's partitions and retention.
deadletter_topic = faust_topic(app, settings, DEADLETTER)


def send_to_dead_letter(
    producer: KestrelProducer, event: faust.EventT[bytes], error: InvalidMessage, stage: str
) -> None:
    """Queue the original key and value, untouched, with the context in headers.

    The caller flushes ``producer`` before it acks ``event``, so a dead letter is never
    lost to a crash.
    """
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
    producer.send(
        deadletter_topic.get_topic_name(), message.value, message.key, headers=letter.headers()
    )
