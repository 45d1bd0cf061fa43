"""The CenterFace decoder against a generated model with CenterFace's fixed dims.

The model ignores its pixels and outputs one known face (and a weaker duplicate
NMS must remove), at the published model's fixed 640 x 480 input; the detector must
make the dims dynamic to run a batch of two larger frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.centerface import CenterFaceDetector

H, W = 480, 640


def fixed_centerface(path: Path) -> Path:
    h, w = H // 4, W // 4
    heat = np.zeros((1, 1, h, w), np.float32)
    scale = np.zeros((1, 2, h, w), np.float32)
    offset = np.zeros((1, 2, h, w), np.float32)
    for x, score in ((40, 0.9), (41, 0.8)):
        heat[0, 0, 30, x] = score
        scale[0, :, 30, x] = [np.log(64 / 4), np.log(48 / 4)]  # a 64 x 48 face
    outputs = {"537": heat, "538": scale, "539": offset, "540": np.zeros((1, 10, h, w), np.float32)}
    initializers = [numpy_helper.from_array(v, f"{k}_const") for k, v in outputs.items()]
    initializers.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    initializers.append(numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"))
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "axes"], ["mean4"]),
        helper.make_node("Mul", ["mean4", "zero"], ["zeros"]),
    ]
    nodes += [helper.make_node("Add", ["zeros", f"{k}_const"], [k]) for k in outputs]
    graph = helper.make_graph(
        nodes,
        "centerface_like",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, H, W])],
        [
            helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape))
            for k, v in outputs.items()
        ],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_fixed_dims_become_dynamic_and_faces_come_back_in_frame_pixels(tmp_path: Path) -> None:
    detector = CenterFaceDetector(fixed_centerface(tmp_path / "centerface.onnx"))
    frames = [np.zeros((720, 960, 3), np.uint8)] * 2  # 1.5 x the model's size, a batch of 2
    for found in detector.detect(frames):
        assert found.labels == ("face",)  # the weaker neighbour is suppressed
        np.testing.assert_allclose(found.scores, [0.9], rtol=1e-6)
        # Centre (40.5, 30.5) cells x 4 = (162, 122); 48 x 64 around it; then x 1.5.
        np.testing.assert_allclose(found.boxes, [[207, 135, 279, 231]], atol=1e-3)
