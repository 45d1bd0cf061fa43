"""Dynamic batching of frames for inference: per-camera queues and an adaptive size.

:class:`FrameQueues` holds each camera's waiting frames, at most ``per_camera``: when a
live camera falls behind, its *oldest* frame is dropped (and counted), because a
fresh frame is worth more than a stale one. :meth:`FrameQueues.take` fills a batch
from the oldest frames across cameras, in arrival order.

:class:`AdaptiveBatchSize` is the digest's controller (section D): it starts from the
device's memory (more than 8 GB: 8; more than 4 GB: 4; else the minimum; on the CPU,
the minimum), keeps the last 10 batches, grows by one while the mean latency of the
last 3 is under the target (100 ms), shrinks by one while it is over the maximum
(200 ms), and halves under memory pressure. It never leaves [min, max].

:class:`ArrivalGap` says whether waiting for a fuller batch can pay: the batcher waits
up to the digest's 10 ms for more frames only while the next one is expected within
that time. At 120 FPS a frame comes every 8 ms and batches fill; at 13 FPS one comes
every 76 ms, and waiting 10 ms for it would only add 10 ms to every frame's latency.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
GB = 1024**3


@dataclass
class Waiting(Generic[T]):
    camera_id: str
    arrived: float  # monotonic seconds
    item: T


@dataclass
class FrameQueues(Generic[T]):
    per_camera: int
    queues: dict[str, deque[Waiting[T]]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def put(self, camera_id: str, arrived: float, item: T) -> Waiting[T] | None:
        """Queue a frame; return the camera's oldest frame if it had to make room."""
        queue = self.queues.setdefault(camera_id, deque())
        evicted = None
        if len(queue) >= self.per_camera:
            evicted = queue.popleft()
            self.dropped[camera_id] = self.dropped.get(camera_id, 0) + 1
        queue.append(Waiting(camera_id, arrived, item))
        return evicted

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def oldest(self) -> float | None:
        """Arrival time of the oldest waiting frame."""
        heads = [q[0].arrived for q in self.queues.values() if q]
        return min(heads) if heads else None

    def take(self, n: int) -> list[Waiting[T]]:
        """Up to ``n`` frames, oldest first across cameras."""
        batch: list[Waiting[T]] = []
        while len(batch) < n:
            heads = [(q[0].arrived, cid) for cid, q in self.queues.items() if q]
            if not heads:
                break
            _, camera_id = min(heads)
            batch.append(self.queues[camera_id].popleft())
        return batch


@dataclass
class ArrivalGap:
    """The mean gap between frame arrivals (all cameras together), a moving average.

    Frames come in bursts (a fetch hands over several at once), so the mean of the
    gaps, not the last one, is the arrival rate's measure. A gap is counted at most
    ``cap_s`` (the batcher gives twice its delay): after a quiet spell the estimate
    recovers within a few frames.
    """

    cap_s: float
    alpha: float = 0.2
    mean_s: float | None = None
    last: float | None = None

    def arrived(self, now: float) -> None:
        """A frame arrived at ``now`` (monotonic seconds)."""
        if self.last is not None:
            gap = min(max(now - self.last, 0.0), self.cap_s)
            self.mean_s = (
                gap if self.mean_s is None else self.mean_s + self.alpha * (gap - self.mean_s)
            )
        self.last = now

    def expected_by(self, deadline: float) -> bool:
        """Is another frame expected to arrive by ``deadline``? Unknown rate: assume so."""
        if self.last is None or self.mean_s is None:
            return True
        return self.last + self.mean_s <= deadline


@dataclass
class AdaptiveBatchSize:
    min_size: int = 1
    max_size: int = 8
    target_ms: float = 100.0
    max_ms: float = 200.0
    size: int = 1
    history: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=10))

    @classmethod
    def for_device(
        cls, device_memory_bytes: int | None, min_size: int, max_size: int, **kw: float
    ) -> AdaptiveBatchSize:
        """Start from the accelerator's memory; None (CPU) starts at the minimum."""
        if device_memory_bytes is not None and device_memory_bytes > 8 * GB:
            start = 8
        elif device_memory_bytes is not None and device_memory_bytes > 4 * GB:
            start = 4
        else:
            start = min_size
        size = max(min_size, min(max_size, start))
        return cls(min_size=min_size, max_size=max_size, size=size, **kw)  # type: ignore[arg-type]

    def record(self, batch_size: int, latency_ms: float) -> int:
        """Add one batch's latency; return the size for the next batch."""
        self.history.append((batch_size, latency_ms))
        recent = [ms for _, ms in list(self.history)[-3:]]
        mean = sum(recent) / len(recent)
        if len(recent) == 3 and mean < self.target_ms:
            self.size = min(self.max_size, self.size + 1)
        elif mean > self.max_ms:
            self.size = max(self.min_size, self.size - 1)
        return self.size

    def memory_pressure(self) -> int:
        """Halve the batch (memory is short); return the new size."""
        self.size = max(self.min_size, self.size // 2)
        return self.size
