"""TensorFlow object-detection API SSD models, converted to ONNX with tf2onnx.

Input ``image_tensor``: uint8 RGB, ``[N, H, W, 3]`` (Kestrel feeds 300 x 300, the
size SSDLite-MobileNetV2 was trained at). Outputs ``num_detections [N]``,
``detection_boxes [N, K, 4]`` (ymin, xmin, ymax, xmax, normalised),
``detection_scores [N, K]`` and ``detection_classes [N, K]`` (COCO ids, 1 = person),
already non-max suppressed by the graph.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from models.base import Detections, Detector, Image

#: The COCO ids Kestrel names; a model trained on people only emits just 1.
COCO_LABELS = {1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 6: "bus", 8: "truck"}


class TfSsdDetector(Detector):
    """SSD from the TF object-detection API (the default: SSDLite people detector)."""

    name = "ssdlite"
    size = 300

    def preprocess(self, image: Image) -> NDArray[np.generic]:
        resized = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)

    def postprocess(
        self, outputs: list[NDArray[np.generic]], sizes: list[tuple[int, int]]
    ) -> list[Detections]:
        counts, boxes, scores, classes = (np.asarray(o, dtype=np.float32) for o in outputs)
        results = []
        for i, (height, width) in enumerate(sizes):
            n = int(counts[i])
            keep = np.flatnonzero(scores[i, :n] >= self.score_threshold)
            ids = classes[i, keep].astype(np.int64)
            known = np.array([c in COCO_LABELS for c in ids.tolist()], dtype=bool)
            keep, ids = keep[known], ids[known]
            ymin, xmin, ymax, xmax = (boxes[i, keep, j] for j in range(4))
            pixels = np.stack([xmin * width, ymin * height, xmax * width, ymax * height], axis=1)
            results.append(
                Detections(
                    pixels.astype(np.float32).reshape(-1, 4),
                    scores[i, keep].astype(np.float32),
                    tuple(COCO_LABELS[c] for c in ids.tolist()),
                )
            )
        return results
