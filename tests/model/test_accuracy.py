"""Detection and tracking accuracy against ground truth, on a recorded synthetic scenario.

Three synthetic cameras (seeds 100-102), three people each, 20 s at 10 FPS: 600
frames, scored with :mod:`kestrel.camera.evaluate` (IoU 0.5; people less than half
visible are "don't care"). The scene is deterministic, and so is the CPU detector.

Measured on the development machine (onnxruntime 1.31, CPU): detection precision
0.979, recall 0.687; tracks precision 0.988, recall 0.658, 26 ID switches over 8
people seen (3.3 per person in 20 s, most after one walker passes behind another).
The thresholds below leave a margin for other CPUs and onnxruntime versions; they
are not goals, they are what this detector and tracker do on this scene.
"""

from __future__ import annotations

import pytest

from kestrel.camera.evaluate import Score
from kestrel.camera.synthetic import SyntheticScene
from kestrel.camera.tracker import Tracker
from kestrel.settings import load_settings
from models.ssd_tf import TfSsdDetector

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]


def test_detection_and_tracking_against_ground_truth() -> None:
    detector = TfSsdDetector(load_settings().detector_path, score_threshold=0.3)
    detections, tracks = Score(), Score()
    for camera in range(3):
        scene = SyntheticScene(100 + camera, actors=3)
        tracker = Tracker()
        for i in range(200):
            frame, truth = scene.render(i / 10)
            (found,) = detector.detect([frame])
            true = [((camera, t.actor_id), t.box, t.visible) for t in truth]
            boxes = [tuple(b) for b in found.boxes.tolist()]
            detections.add_frame(true, [(None, b) for b in boxes])
            confirmed = tracker.match_and_update(boxes, found.scores.tolist(), list(found.labels))
            tracks.add_frame(true, [(t.track_id, t.box) for t in confirmed])
    print("detections", detections.summary(), "tracks", tracks.summary())  # noqa: T201 - the figures, with -s
    assert detections.precision >= 0.95
    assert detections.recall >= 0.62
    assert tracks.precision >= 0.95
    assert tracks.recall >= 0.60
    people = tracks.summary()["objects"]
    assert people >= 8
    assert tracks.id_switches / people <= 4.5
