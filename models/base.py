"""The detector interface: BGR frames in, boxes in frame pixels out.

A detector is an ONNX model plus the two things that differ between model families:
how a frame becomes one input sample (:meth:`Detector.preprocess`) and how the
outputs become boxes (:meth:`Detector.postprocess`); one file per output format
(``ssd_tf.py``, ``yolo.py``). The ONNX Runtime session is created once, on the CUDA
execution provider when this onnxruntime has it and CPU otherwise (logged), and
warmed up with a zero batch so the first frame does not pay for the allocations.

Every method here blocks (NumPy, OpenCV, ONNX Runtime all release the GIL while
they work): callers run them in a thread pool, never on an event loop.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float32]
Image = NDArray[np.uint8]


@dataclass(frozen=True)
class Detections:
    """One frame's detections: ``boxes`` are x1, y1, x2, y2 in the frame's pixels."""

    boxes: FloatArray
    scores: FloatArray
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), ())


def providers() -> list[str]:
    """CUDA when this onnxruntime build has it, then CPU."""
    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in wanted if p in available]


class Detector(ABC):
    """An ONNX detector: a session made once, a batch of frames per call."""

    #: A short name, used as the model metrics' source (``model:<name>``).
    name = "detector"

    def __init__(
        self,
        model_path: Path,
        score_threshold: float = 0.4,
        intra_op_threads: int = 0,
        warm_batch: int = 1,
        spin: bool = False,
    ) -> None:
        if not model_path.exists():
            raise FileNotFoundError(f"model {model_path} does not exist; run `make model`")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads  # 0: onnxruntime's default
        # ONNX Runtime's intra-op threads spin after each run, waiting for the next:
        # faster back to back, but with frames arriving paced that was about 60 % more
        # CPU a frame (25.7 -> 41.1 ms, batch 4 every 100 ms), taken from the broker and
        # the stages that share the cores. KESTREL_INFERENCE_SPIN turns it back on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = ort.InferenceSession(str(model_path), options, providers=providers())
        self.provider = self.session.get_providers()[0]
        self.score_threshold = score_threshold
        self.input_name = self.session.get_inputs()[0].name
        started = time.perf_counter()
        self.warm_up(warm_batch)
        log.info(
            "%s: %s on %s, warm-up %.0f ms",
            self.name,
            model_path.name,
            self.provider,
            (time.perf_counter() - started) * 1000,
        )

    @abstractmethod
    def preprocess(self, image: Image) -> NDArray[np.generic]:
        """One BGR frame as one input sample (no batch axis)."""

    @abstractmethod
    def postprocess(
        self, outputs: list[NDArray[np.generic]], sizes: list[tuple[int, int]]
    ) -> list[Detections]:
        """The session's outputs for a batch; ``sizes`` are the frames' (height, width)."""

    def warm_up(self, batch: int = 1) -> None:
        """Run the largest batch the worker will run: ONNX Runtime's CPU arena grows to
        what that needs now, at start, and not in steps mid-stream (it keeps what it took;
        measured by ``make bench-requests``)."""
        self.detect([np.zeros((480, 640, 3), np.uint8)] * batch)

    def run(self, batch: NDArray[np.generic]) -> list[NDArray[np.generic]]:
        """One session run over a preprocessed batch."""
        outputs: list[NDArray[np.generic]] = self.session.run(None, {self.input_name: batch})
        return outputs

    def detect(self, images: list[Image]) -> list[Detections]:
        """Detections for each frame of a batch."""
        if not images:
            return []
        batch = np.stack([self.preprocess(image) for image in images])
        sizes = [(image.shape[0], image.shape[1]) for image in images]
        return self.postprocess(self.run(batch), sizes)
