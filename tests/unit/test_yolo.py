"""The YOLO decoder against generated ONNX models of YOLO's two output layouts.

Each model ignores its pixels and always outputs the same known anchors, so the
expected boxes, after letterbox inversion and NMS, are known exactly; ONNX Runtime
runs it like any user's export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.yolo import YoloDetector

SIZE = 640


def constant_model(path: Path, anchors: np.ndarray) -> Path:
    """``[N, 3, 640, 640] -> anchors`` broadcast over the batch (``anchors[None]``)."""
    const = numpy_helper.from_array(anchors[None].astype(np.float32), "anchors")
    axes = numpy_helper.from_array(np.array([1, 2], np.int64), "axes")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "axes"], ["mean3"]),
        helper.make_node("Mul", ["mean3", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "anchors"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, None)],
        initializer=[const, axes, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def v8_anchors() -> np.ndarray:
    """[84, 100]: a person, a weaker duplicate of it, and a car; the rest empty."""
    out = np.zeros((84, 100), np.float32)
    out[:4, 0], out[4 + 0, 0] = [320, 320, 100, 200], 0.9  # person
    out[:4, 1], out[4 + 0, 1] = [322, 318, 100, 200], 0.8  # duplicate: suppressed
    out[:4, 2], out[4 + 2, 2] = [100, 400, 60, 40], 0.7  # car
    return out


def test_v8_layout_boxes_come_back_in_frame_pixels(tmp_path: Path) -> None:
    detector = YoloDetector(constant_model(tmp_path / "v8.onnx", v8_anchors()))
    # A 1280 x 640 frame is scaled by 0.5 into 640 x 320 and padded by 160 rows.
    frame = np.zeros((640, 1280, 3), np.uint8)
    found = detector.detect([frame, frame])
    assert len(found) == 2
    for detections in found:
        assert detections.labels == ("person", "car")
        np.testing.assert_allclose(detections.scores, [0.9, 0.7], rtol=1e-6)
        person = [(320 - 50) * 2, (320 - 100 - 160) * 2, (320 + 50) * 2, (320 + 100 - 160) * 2]
        car = [(100 - 30) * 2, (400 - 20 - 160) * 2, (100 + 30) * 2, (400 + 20 - 160) * 2]
        np.testing.assert_allclose(detections.boxes, [person, car], atol=1e-3)


def test_v5_layout_scores_are_objectness_times_class(tmp_path: Path) -> None:
    anchors = np.zeros((100, 85), np.float32)  # [A, 5 + 80]
    anchors[0, :4] = [320, 320, 64, 64]
    anchors[0, 4], anchors[0, 5 + 16] = 0.8, 0.75  # dog: 0.8 x 0.75 = 0.6
    anchors[1, :4], anchors[1, 4], anchors[1, 5] = [100, 100, 10, 10], 0.9, 0.3  # 0.27: below
    detector = YoloDetector(constant_model(tmp_path / "v5.onnx", anchors), score_threshold=0.4)
    (found,) = detector.detect([np.zeros((640, 640, 3), np.uint8)])
    assert found.labels == ("dog",)
    np.testing.assert_allclose(found.scores, [0.6], rtol=1e-6)
    np.testing.assert_allclose(found.boxes, [[288, 288, 352, 352]], atol=1e-3)


def test_a_missing_model_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make model"):
        YoloDetector(tmp_path / "nope.onnx")


def test_onnx_runtimes_threads_do_not_spin_unless_asked(tmp_path: Path) -> None:
    """Spinning between runs cost the paced inference worker about 60 % more CPU a frame."""
    model = constant_model(tmp_path / "v8.onnx", v8_anchors())
    for spin, expected in ((False, "0"), (True, "1")):
        options = YoloDetector(model, spin=spin).session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
