"""The camera registry: the compacted ``cameras`` topic, read into memory.

A camera producer registers each camera it runs (its :class:`CameraConfig`, keyed by
camera id) and deletes it (a tombstone) when the camera is removed, so the pipeline
learns of cameras as they come and go. Workers read the whole topic at start, then
follow it, in a thread of their own (:class:`CameraRegistry`); a frame from a camera
the registry does not know goes to the dead letters. A record that does not validate
is skipped here (logged once); the stream workers' registry check dead-letters it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from kestrel.producer import KestrelProducer
from kestrel.schemas.camera import CameraConfig
from kestrel.settings import Settings
from kestrel.topics import CAMERAS, ensure_topics

REMOVED_MAX = 1_000  # removed cameras remembered (for their frames still on the way)

log = logging.getLogger(__name__)


def register(producer: KestrelProducer, settings: Settings, config: CameraConfig) -> None:
    producer.send(
        CAMERAS.name(settings), config.model_dump_json().encode(), config.camera_id.encode()
    )


def unregister(producer: KestrelProducer, settings: Settings, camera_id: str) -> None:
    producer.send(CAMERAS.name(settings), None, camera_id.encode())


class CameraRegistry:
    """Every registered camera's config, kept current by a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cameras: dict[str, CameraConfig] = {}
        #: Removed cameras: their config and when (ns), for frames captured before.
        self.removed: OrderedDict[str, tuple[CameraConfig, int]] = OrderedDict()
        self.loaded = threading.Event()
        self.error: BaseException | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.skipped = 0

    def start(self, timeout_s: float = 30.0) -> None:
        """Follow the topic; return once it has been read to its end. Idempotent.

        Safe to call at every start of an agent that Faust restarts: a running
        follower is kept, a failed one is replaced by a fresh thread.
        """
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self.loaded.clear()
                self._stop.clear()
                self.error = None
                self._thread = threading.Thread(
                    target=self._run, name="camera-registry", daemon=True
                )
                self._thread.start()
        if not self.loaded.wait(timeout_s):
            raise TimeoutError(f"camera registry not loaded within {timeout_s:g} s")
        if self.error is not None:
            raise RuntimeError(f"camera registry failed: {self.error}") from self.error

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def get(self, camera_id: str, captured_ns: int | None = None) -> CameraConfig | None:
        """The camera's config; for a frame captured before the camera was removed,
        the config it had (its producer removes it when it stops, while its last
        frames may still be on their way)."""
        config = self.cameras.get(camera_id)
        if config is None and captured_ns is not None:
            gone = self.removed.get(camera_id)
            if gone is not None and captured_ns < gone[1]:
                return gone[0]
        return config

    def wait_for(self, camera_id: str, timeout_s: float) -> CameraConfig | None:
        """The camera's config, waiting up to ``timeout_s`` for it to be registered.

        A producer registers a camera and then sends its frames at once, on another
        topic: the first frames can reach a worker before the registration does.
        Blocks: call it from a thread.
        """
        with self._changed:
            self._changed.wait_for(lambda: camera_id in self.cameras, timeout_s)
        return self.cameras.get(camera_id)

    def _run(self) -> None:
        try:
            self._follow()
        except Exception as exc:  # reported to start(), or logged once running
            self.error = exc
            log.exception("camera registry stopped")
            self.loaded.set()

    def _follow(self) -> None:
        topic = CAMERAS.name(self.settings)
        # A pipeline may start before any camera: the registry is then empty, not missing.
        ensure_topics(self.settings, [CAMERAS])
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap_servers,
                "group.id": f"{self.settings.namespace}-registry-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            },
            logger=logging.getLogger("kestrel.librdkafka"),
        )
        try:
            partitions = _partitions(consumer, topic)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            at_end: set[int] = set()
            while not self._stop.is_set():
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition() or 0)
                        if len(at_end) == len(partitions):
                            self.loaded.set()
                        continue
                    log.warning("camera registry: %s", error)
                    continue
                self._apply(msg.key(), msg.value())
        finally:
            consumer.close()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        camera_id = (key or b"").decode(errors="replace")
        if value is None:
            config = self.cameras.pop(camera_id, None)
            if config is not None:
                log.info("camera %s removed", camera_id)
                self.removed[camera_id] = (config, time.time_ns())
                self.removed.move_to_end(camera_id)
                while len(self.removed) > REMOVED_MAX:
                    self.removed.popitem(last=False)
            return
        try:
            config = CameraConfig.model_validate_json(value)
        except ValueError as exc:
            self.skipped += 1
            log.warning("camera registry: skipping a bad config for %r: %s", camera_id, exc)
            return
        if camera_id not in self.cameras:
            log.info("camera %s registered (%s, %g fps)", camera_id, config.source, config.fps)
        with self._changed:
            self.cameras[camera_id] = config
            self._changed.notify_all()


def _partitions(consumer: Consumer, topic: str, timeout_s: float = 30.0) -> list[int]:
    """The topic's partitions, once its metadata has them (just created: not at once)."""
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is not None and metadata.error is None and metadata.partitions:
            return sorted(metadata.partitions)
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"camera registry topic {topic} has no partitions after {timeout_s:g} s"
            )
        time.sleep(0.2)  # metadata of a topic created a moment ago: ask again


class UnknownCameras:
    """Camera ids refused at once for a while, in bounded memory (producers choose ids)."""

    def __init__(self, memory_s: float, max_ids: int = 10_000) -> None:
        self.memory_s = memory_s
        self.max_ids = max_ids
        self._until: dict[str, float] = {}  # insertion order is expiry order

    def refuses(self, camera_id: str, now: float) -> bool:
        return self._until.get(camera_id, 0.0) > now

    def remember(self, camera_id: str, now: float) -> None:
        if len(self._until) >= self.max_ids:
            for expired in [c for c, until in self._until.items() if until <= now]:
                del self._until[expired]
            while len(self._until) >= self.max_ids:  # all still fresh: forget the oldest
                del self._until[next(iter(self._until))]
        self._until.pop(camera_id, None)
        self._until[camera_id] = now + self.memory_s

    def __len__(self) -> int:
        return len(self._until)
