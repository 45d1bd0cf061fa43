"""The four priority lanes and the bounded queues an inference worker serves them from.

Digest C and E: urgent (< 2 s), high (< 5 s), normal (< 10 s) and low (background).
:class:`LaneQueues` holds the requests' items (an image, or one frame of a clip) that
wait for the detector. Each lane is bounded: a full lane refuses a new request (its
submitter hears ``lane_full``) rather than delaying the ones it holds. Items leave
by lane first, then earliest deadline (EDF) within a lane, then arrival; so a flood of
low requests never delays an urgent one, and the live cameras' frames are taken
between the deadline lanes and ``low`` (see :mod:`agents.inference`).
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class Lane(enum.StrEnum):
    URGENT = "urgent"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 is served first."""
        return LANE_ORDER.index(self)

    @property
    def default_deadline_ms(self) -> int | None:
        """The digest's target for the lane; None for low (background, no deadline)."""
        return DEFAULT_DEADLINE_MS[self]


LANE_ORDER = (Lane.URGENT, Lane.HIGH, Lane.NORMAL, Lane.LOW)
DEFAULT_DEADLINE_MS: dict[Lane, int | None] = {
    Lane.URGENT: 2_000,
    Lane.HIGH: 5_000,
    Lane.NORMAL: 10_000,
    Lane.LOW: None,
}
#: Items a lane holds at most (an image is one item, a clip one per frame it samples).
DEFAULT_CAPACITY: dict[Lane, int] = {
    Lane.URGENT: 64,
    Lane.HIGH: 128,
    Lane.NORMAL: 256,
    Lane.LOW: 512,
}
#: Lanes whose items go ahead of the live cameras' frames in a batch.
AHEAD_OF_CAMERAS = (Lane.URGENT, Lane.HIGH, Lane.NORMAL)


@dataclass(order=True)
class Queued(Generic[T]):
    """One waiting item; ordered by deadline (None last), then arrival."""

    sort_key: tuple[float, int]
    request_id: str = field(compare=False)
    lane: Lane = field(compare=False)
    deadline_ms: int | None = field(compare=False)
    item: T = field(compare=False)


class LaneFull(Exception):
    """The lane holds its capacity; the request is refused, nothing of it is queued."""


@dataclass
class LaneQueues(Generic[T]):
    capacity: dict[Lane, int] = field(default_factory=lambda: dict(DEFAULT_CAPACITY))
    heaps: dict[Lane, list[Queued[T]]] = field(
        default_factory=lambda: {lane: [] for lane in LANE_ORDER}
    )
    _arrivals: Iterator[int] = field(default_factory=itertools.count)

    def put_all(self, lane: Lane, request_id: str, deadline_ms: int | None, items: list[T]) -> None:
        """Queue all of a request's items, or none of them (:class:`LaneFull`)."""
        heap = self.heaps[lane]
        if len(heap) + len(items) > self.capacity[lane]:
            raise LaneFull(
                f"the {lane} lane holds {len(heap)} of its {self.capacity[lane]} items; "
                "retry later or use another lane"
            )
        due = float("inf") if deadline_ms is None else float(deadline_ms)
        for item in items:
            queued = Queued((due, next(self._arrivals)), request_id, lane, deadline_ms, item)
            heapq.heappush(heap, queued)

    def __len__(self) -> int:
        return sum(len(h) for h in self.heaps.values())

    def waiting(self, lanes: tuple[Lane, ...] = LANE_ORDER) -> int:
        return sum(len(self.heaps[lane]) for lane in lanes)

    def take(self, n: int, lanes: tuple[Lane, ...] = LANE_ORDER) -> list[Queued[T]]:
        """Up to ``n`` items: the first of ``lanes`` first, earliest deadline first."""
        taken: list[Queued[T]] = []
        for lane in sorted(lanes, key=lambda lane: lane.rank):
            heap = self.heaps[lane]
            while heap and len(taken) < n:
                taken.append(heapq.heappop(heap))
        return taken

    def remove(self, request_id: str) -> list[Queued[T]]:
        """Take a request's items out (cancelled, or failed); what was removed."""
        removed: list[Queued[T]] = []
        for lane, heap in self.heaps.items():
            kept = [q for q in heap if q.request_id != request_id]
            if len(kept) != len(heap):
                removed.extend(q for q in heap if q.request_id == request_id)
                heapq.heapify(kept)
                self.heaps[lane] = kept
        return removed

    def drain(self, lane: Lane) -> list[Queued[T]]:
        """Take out every item of ``lane`` (shed under memory pressure)."""
        drained, self.heaps[lane] = sorted(self.heaps[lane]), []
        return drained

    def overdue(self, now_ms: int) -> list[Queued[T]]:
        """Take out every item whose deadline has passed (its request has failed)."""
        late: list[Queued[T]] = []
        for heap in self.heaps.values():
            while heap and heap[0].deadline_ms is not None and heap[0].deadline_ms < now_ms:
                late.append(heapq.heappop(heap))
        return late

    def earliest_deadline(self, lanes: tuple[Lane, ...] = AHEAD_OF_CAMERAS) -> int | None:
        deadlines = [
            self.heaps[lane][0].deadline_ms
            for lane in lanes
            if self.heaps[lane] and self.heaps[lane][0].deadline_ms is not None
        ]
        return min(d for d in deadlines if d is not None) if deadlines else None
