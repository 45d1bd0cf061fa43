"""Telemetry stage: collector messages in, 1-second windows of every field.

Reads the three collector topics as raw bytes and validates each message itself, so
that a malformed one reaches the dead-letter topic (with its offset) instead of being
dropped by a Faust deserializer; the stream goes on either way.
"""

from __future__ import annotations

import faust

from agents.deadletter import send_to_dead_letter
from faust_app import app, settings
from kestrel.errors import InvalidMessage
from kestrel.schemas import parse_envelope
from kestrel.topics import COLLECTOR_TOPICS, faust_topic
from tables.metric_windows import add_sample

collector_topics = faust_topic(app, settings, *COLLECTOR_TOPICS)


@app.agent(collector_topics)
async def window_metrics(stream: faust.StreamT[bytes]) -> None:
    """Validate each collector message and add its fields to their windows."""
    async for event in stream.events():
        try:
            envelope = parse_envelope(event.value)
        except InvalidMessage as exc:
            await send_to_dead_letter(event, exc, stage="window_metrics")
            continue
        for field, value in envelope.data.items():
            if value is not None:
                add_sample(envelope.source, field, envelope.timestamp, value)
