"""Registry check: every record of the ``cameras`` topic is validated, once.

Every worker reads the whole registry (:class:`kestrel.camera.registry.CameraRegistry`)
and skips a record that does not validate; this agent, in the stream workers' group,
is the one reader that sends such a record to the dead letters, exactly once (its
progress is a marker of :mod:`kestrel.state`), so an operator sees the bad camera
config with its reason, topic, partition and offset.
"""

from __future__ import annotations

from typing import cast

import faust

from faust_app import app, settings
from kestrel.camera.frames import check_camera_id
from kestrel.errors import InvalidMessage
from kestrel.schemas.camera import CameraConfig
from kestrel.state import Event, Restored, StateStore, Task
from kestrel.topics import CAMERAS, DEADLETTER, STATE_REGISTRY, faust_topic
from tables import bind

cameras_topic = faust_topic(app, settings, CAMERAS)


def check(task: Task[None], event: Event) -> None:
    """A registry record: a valid camera id as key, and its config (or a tombstone)."""
    message = event.message
    camera_id = check_camera_id((message.key or b"").decode(errors="replace"))
    if message.value is None:
        return  # the camera was removed
    try:
        config = CameraConfig.model_validate_json(message.value)
    except ValueError as exc:
        raise InvalidMessage("invalid_field", str(exc)[:500]) from None
    if config.camera_id != camera_id:
        raise InvalidMessage(
            "invalid_field", f"key {camera_id!r} names another camera than {config.camera_id!r}"
        )


def _nothing(restored: Restored) -> None:
    return None


def _persist(task: Task[None]) -> None:
    return None  # the markers are the whole state


store: StateStore[None] = StateStore(
    settings,
    app_id=app.conf.id,
    name="registry",
    changelog=STATE_REGISTRY,
    inputs=[CAMERAS],
    load=_nothing,
    persist=_persist,
    interval_s=1.0,
    deadletter=DEADLETTER.name(settings),
)
bind(app, store)


@app.agent(cameras_topic)
async def check_registry(stream: faust.StreamT[bytes]) -> None:
    """Dead-letter every camera config that does not validate."""
    manual_acks = cast(faust.Stream[bytes], stream).noack()
    await store.start(app.crash)
    async for event in manual_acks.events():
        await store.process(event, check)
