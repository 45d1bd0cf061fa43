"""A multi-object tracker in the ByteTrack style, with state that fits in one record.

Per frame (:meth:`Tracker.match_and_update`):

1. every live track predicts its box one frame on, at its constant velocity;
2. detections scoring at least ``high`` are matched to the tracks by IoU (Hungarian
   assignment, IoU >= 0.3), then the remaining low-score detections (>= ``low``) to
   the tracks still unmatched: ByteTrack's second pass, which keeps a track through
   the frames in which its object is partly hidden and scores low;
3. matched tracks take the detection's box (velocity smoothed); unmatched tracks
   coast and are dropped after ``max_misses`` frames; unmatched high-score
   detections start new tracks, *confirmed* (reported) after ``min_hits`` frames.

No appearance model and no Kalman filter: IoU and velocity only. The state is a
plain dict of lists (:meth:`to_json` / :meth:`from_json`), so it can live in the
tracking stage's changelog keyed by camera id and move with its partition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

Box = tuple[float, float, float, float]


@dataclass
class Track:
    track_id: int
    label: str
    box: Box
    velocity: tuple[float, float]  # box centre, px per frame
    score: float
    hits: int = 1
    misses: int = 0
    age: int = 1

    def predicted(self) -> Box:
        vx, vy = self.velocity
        x1, y1, x2, y2 = self.box
        return (x1 + vx, y1 + vy, x2 + vx, y2 + vy)


def iou_matrix(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """IoU of every box of ``a`` ([n, 4]) with every box of ``b`` ([m, 4])."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def assign(iou: NDArray[np.float64], threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col) maximising total IoU, each at least ``threshold``."""
    if iou.size == 0:
        return []
    rows, cols = linear_sum_assignment(-iou)
    return [
        (r, c) for r, c in zip(rows.tolist(), cols.tolist(), strict=True) if iou[r, c] >= threshold
    ]


@dataclass
class Tracker:
    high: float = 0.5
    low: float = 0.2
    match_iou: float = 0.3
    min_hits: int = 2
    max_misses: int = 10
    next_id: int = 1
    tracks: list[Track] | None = None

    def __post_init__(self) -> None:
        if self.tracks is None:
            self.tracks = []

    def match_and_update(
        self, boxes: list[Box], scores: list[float], labels: list[str]
    ) -> list[Track]:
        """One frame's detections in; the confirmed tracks seen in this frame out."""
        tracks = self.tracks if self.tracks is not None else []
        predicted = np.array([t.predicted() for t in tracks], dtype=np.float64).reshape(-1, 4)
        dets = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        score_arr = np.array(scores, dtype=np.float64)
        strong = np.flatnonzero(score_arr >= self.high)
        weak = np.flatnonzero((score_arr >= self.low) & (score_arr < self.high))

        matched: dict[int, int] = {}  # track index -> detection index
        for pool in (strong, weak):
            free = [i for i in range(len(tracks)) if i not in matched]
            iou = iou_matrix(predicted[free], dets[pool])
            for r, c in assign(iou, self.match_iou):
                matched[free[r]] = int(pool[c])

        seen: list[Track] = []
        kept: list[Track] = []
        for i, track in enumerate(tracks):
            j = matched.get(i)
            if j is None:
                track.misses += 1
                track.age += 1
                track.box = track.predicted()
                if track.misses <= self.max_misses:
                    kept.append(track)
                continue
            new_box: Box = tuple(float(v) for v in dets[j])  # type: ignore[assignment]
            old_cx, old_cy = _centre(track.box)
            cx, cy = _centre(new_box)
            vx, vy = track.velocity
            track.velocity = (0.5 * vx + 0.5 * (cx - old_cx), 0.5 * vy + 0.5 * (cy - old_cy))
            track.box, track.score = new_box, float(score_arr[j])
            track.label = labels[j]
            track.hits += 1
            track.misses = 0
            track.age += 1
            kept.append(track)
            if track.hits >= self.min_hits:
                seen.append(track)
        used = set(matched.values())
        for j in strong.tolist():
            if j not in used:
                box: Box = tuple(float(v) for v in dets[j])  # type: ignore[assignment]
                track = Track(self.next_id, labels[j], box, (0.0, 0.0), float(score_arr[j]))
                self.next_id += 1
                kept.append(track)
                if self.min_hits <= 1:
                    seen.append(track)
        self.tracks = kept
        return seen

    def to_json(self) -> dict[str, Any]:
        return {"next_id": self.next_id, "tracks": [asdict(t) for t in self.tracks or []]}

    @classmethod
    def from_json(cls, data: dict[str, Any], **params: Any) -> Tracker:
        tracks = [
            Track(
                **{**t, "box": tuple(t["box"]), "velocity": tuple(t["velocity"])},
            )
            for t in data.get("tracks", [])
        ]
        return cls(next_id=int(data.get("next_id", 1)), tracks=tracks, **params)


def _centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
