"""YOLO v5 / v8-style ONNX detectors: the models users bring most.

Input: float32 RGB in 0..1, ``[N, 3, S, S]``, the frame letterboxed (scaled to fit,
padded with grey 114). Output, one tensor, either layout, told apart by its shape:

* v8: ``[N, 4 + C, A]``: per anchor cx, cy, w, h (input pixels), then C class scores;
* v5: ``[N, A, 5 + C]``: cx, cy, w, h, objectness, then C class probabilities
  (score = objectness x class probability).

Boxes are non-max suppressed per class (IoU 0.45), then mapped back to the frame.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from models.base import Detections, Detector, Image

COCO80 = tuple(
    """person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant
    stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe
    backpack umbrella handbag tie suitcase frisbee skis snowboard sports_ball kite
    baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup fork
    knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake
    chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard
    cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear
    hair_drier toothbrush""".split()  # noqa: SIM905 - 80 names read better as text
)
NMS_IOU = 0.45


class YoloDetector(Detector):
    """A YOLO v5/v8 export; class names default to COCO's 80."""

    name = "yolo"
    labels: tuple[str, ...] = COCO80

    @property
    def size(self) -> int:
        shape = self.session.get_inputs()[0].shape
        return shape[2] if isinstance(shape[2], int) else 640

    def preprocess(self, image: Image) -> NDArray[np.generic]:
        size = self.size
        height, width = image.shape[:2]
        scale = min(size / height, size / width)
        h, w = round(height * scale), round(width * scale)
        canvas = np.full((size, size, 3), 114, np.uint8)
        top, left = (size - h) // 2, (size - w) // 2
        canvas[top : top + h, left : left + w] = cv2.resize(image, (w, h))
        rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
        chw: NDArray[np.float32] = rgb.transpose(2, 0, 1).astype(np.float32) / 255.0
        return chw

    def postprocess(
        self, outputs: list[NDArray[np.generic]], sizes: list[tuple[int, int]]
    ) -> list[Detections]:
        raw = np.asarray(outputs[0], dtype=np.float32)
        v8 = raw.shape[1] < raw.shape[2]
        results = []
        for i, (height, width) in enumerate(sizes):
            rows = raw[i].T if v8 else raw[i]
            class_scores = rows[:, 4:] if v8 else rows[:, 5:] * rows[:, 4:5]
            ids = class_scores.argmax(axis=1)
            scores = class_scores[np.arange(len(ids)), ids]
            keep = np.flatnonzero(scores >= self.score_threshold)
            results.append(self._boxes(rows[keep, :4], scores[keep], ids[keep], height, width))
        return results

    def _boxes(
        self,
        cxcywh: NDArray[np.float32],
        scores: NDArray[np.float32],
        ids: NDArray[np.int64],
        height: int,
        width: int,
    ) -> Detections:
        if len(scores) == 0:
            return Detections.empty()
        xywh = cxcywh.copy()
        xywh[:, :2] -= xywh[:, 2:] / 2
        chosen = cv2.dnn.NMSBoxesBatched(
            xywh.tolist(), scores.tolist(), ids.tolist(), self.score_threshold, NMS_IOU
        )
        kept = np.asarray(chosen, dtype=np.int64).reshape(-1)
        size = self.size
        scale = min(size / height, size / width)
        pad_x, pad_y = (size - width * scale) / 2, (size - height * scale) / 2
        x1 = (xywh[kept, 0] - pad_x) / scale
        y1 = (xywh[kept, 1] - pad_y) / scale
        x2 = x1 + xywh[kept, 2] / scale
        y2 = y1 + xywh[kept, 3] / scale
        boxes = np.stack([x1, y1, x2, y2], axis=1)
        np.clip(boxes, 0, [width, height, width, height], out=boxes)
        labels = tuple(
            self.labels[c] if c < len(self.labels) else f"class_{c}" for c in ids[kept].tolist()
        )
        return Detections(boxes.astype(np.float32), scores[kept].astype(np.float32), labels)
