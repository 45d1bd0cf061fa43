"""Scoring detections and tracks against ground truth (synthetic cameras).

Per frame, true and predicted boxes are matched one-to-one by IoU (Hungarian, IoU >=
0.5): matches are true positives, unmatched predictions false positives, unmatched
truths false negatives. Precision = TP / (TP + FP), recall = TP / (TP + FN).

An **ID switch** (CLEAR-MOT's IDSW) is a true object matched to a different track id
than at its previous match; a track's first match is not a switch.

Objects less than half visible (hidden behind nearer ones) are "don't care", as in
the MOT benchmarks: finding one is not a true positive, missing one is not a false
negative, and a prediction matched to one is not a false positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from kestrel.camera.tracker import assign, iou_matrix

Box = Sequence[float]
MATCH_IOU = 0.5
MIN_VISIBLE = 0.5


@dataclass
class Score:
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    id_switches: int = 0
    frames: int = 0
    _last_track: dict[object, int] = field(default_factory=dict)

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        present = self.true_positives + self.false_negatives
        return self.true_positives / present if present else 1.0

    def add_frame(
        self,
        truth: Sequence[tuple[object, Box, float]],
        predicted: Sequence[tuple[int | None, Box]],
    ) -> None:
        """One frame: ``truth`` as (object id, box, visible share), ``predicted`` as
        (track id or None, box)."""
        self.frames += 1
        t = np.array([box for _, box, _ in truth], dtype=np.float64).reshape(-1, 4)
        p = np.array([box for _, box in predicted], dtype=np.float64).reshape(-1, 4)
        pairs = assign(iou_matrix(t, p), MATCH_IOU)
        cares = [bool(visible >= MIN_VISIBLE) for _, _, visible in truth]
        counted = [(ti, pi) for ti, pi in pairs if cares[ti]]
        self.true_positives += len(counted)
        self.false_positives += len(predicted) - len(pairs)  # matches to hidden ones are fine
        self.false_negatives += sum(cares) - len(counted)
        for ti, pi in counted:
            object_id, track_id = truth[ti][0], predicted[pi][0]
            if track_id is None:
                continue
            previous = self._last_track.get(object_id)
            if previous is not None and previous != track_id:
                self.id_switches += 1
            self._last_track[object_id] = track_id

    def summary(self) -> dict[str, float]:
        return {
            "frames": self.frames,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "false_negatives": self.false_negatives,
            "id_switches": self.id_switches,
            "objects": len(self._last_track),
        }
