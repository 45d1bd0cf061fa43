"""Detectors behind one small interface (:mod:`models.base`), one file per output format.

:func:`load_detector` makes the one the settings name; only the inference workers
call it, so no other process loads a model.
"""

from __future__ import annotations

from kestrel.settings import Settings
from models.base import Detections, Detector
from models.centerface import CenterFaceDetector
from models.ssd_tf import TfSsdDetector
from models.yolo import YoloDetector

FORMATS: dict[str, type[Detector]] = {
    "ssd": TfSsdDetector,
    "yolo": YoloDetector,
    "centerface": CenterFaceDetector,
}


def load_detector(settings: Settings, spin: bool | None = None) -> Detector:
    """The detector of ``KESTREL_DETECTOR`` / ``KESTREL_MODEL_PATH``, warmed up with
    a batch of ``KESTREL_MAX_BATCH``; ``spin`` overrides ``KESTREL_INFERENCE_SPIN``."""
    return FORMATS[settings.detector](
        settings.detector_path,
        settings.score_threshold,
        settings.inference_threads,
        warm_batch=settings.max_batch,
        spin=settings.inference_spin if spin is None else spin,
    )


__all__ = ["FORMATS", "Detections", "Detector", "load_detector"]
