"""``kestrel-camera``: publish camera frames to Kestrel.

* ``kestrel-camera --synthetic 4 --fps 10`` (or ``--cameras 4``): four synthetic
  cameras (people walking on known paths), ``synth-0`` ... ``synth-3``;
* ``kestrel-camera --config cameras.yaml``: the cameras of a file, re-read whenever it
  changes, so cameras are added, changed and removed while everything runs::

      cameras:
        - camera_id: door
          source: rtsp://10.0.0.7/stream1     # or clip.mp4, device:0, synthetic:3
          fps: 10
          zones: [{name: entrance, polygon: [[0, 300], [320, 300], [320, 480], [0, 480]]}]
          lines: [{name: threshold, a: [0, 360], b: [640, 360]}]

``--truth FILE`` writes each synthetic frame's true boxes as JSON lines (frame id,
camera, actors), for accuracy checks.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import yaml

from kestrel.camera.producer import CameraFleet, warm_pool
from kestrel.errors import KestrelError
from kestrel.process import stop_on_signals
from kestrel.schemas.camera import CameraConfig
from kestrel.settings import get_settings
from kestrel.topics import CAMERA_FRAMES, CAMERAS, ensure_topics

log = logging.getLogger(__name__)


def synthetic(count: int, fps: float, first_seed: int = 0) -> list[CameraConfig]:
    """``count`` synthetic cameras; a horizontal counting line across each frame."""
    return [
        CameraConfig(
            camera_id=f"synth-{i}",
            source=f"synthetic:{first_seed + i}",
            fps=fps,
            zones=[{"name": "left_half", "polygon": [[0, 0], [320, 0], [320, 480], [0, 480]]}],  # type: ignore[list-item]
            lines=[{"name": "middle", "a": [320, 480], "b": [320, 0]}],  # type: ignore[list-item]
        )
        for i in range(count)
    ]


def read_config(path: Path) -> list[CameraConfig]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return [CameraConfig.model_validate(c) for c in raw.get("cameras", [])]
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise KestrelError(f"camera config {path}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kestrel-camera",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--synthetic", "--cameras", type=int, default=0, metavar="N", help="synthetic cameras"
    )
    parser.add_argument("--fps", type=float, default=10.0, help="FPS cap of synthetic cameras")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first synthetic camera")
    parser.add_argument("--config", type=Path, help="YAML file of cameras, watched for changes")
    parser.add_argument("--encoders", type=int, default=2, help="JPEG encoder processes")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--truth", type=Path, help="write synthetic ground truth here (JSONL)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.synthetic and args.config is None:
        parser.error("give --synthetic N and/or --config FILE")
    settings = get_settings()
    ensure_topics(settings, [CAMERAS, CAMERA_FRAMES])
    truth = args.truth.open("ab") if args.truth else None
    fleet = CameraFleet(settings, workers=args.encoders, truth_out=truth)
    warm_pool(fleet.pool)
    stop = stop_on_signals()
    mtime = None
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while not stop.is_set():
            configs = synthetic(args.synthetic, args.fps, args.seed)
            if args.config is not None:
                current = args.config.stat().st_mtime if args.config.exists() else None
                if current != mtime or mtime is None:
                    mtime = current
                    configs += read_config(args.config) if current is not None else []
                    fleet.apply(configs)
            elif not fleet.runners:
                fleet.apply(configs)
            if deadline is not None and time.monotonic() >= deadline:
                break
            stop.wait(1.0)  # how often the config file is checked
    finally:
        sent = {cid: r.stats.sent for cid, r in fleet.runners.items()}
        fleet.close()
        if truth is not None:
            truth.close()
        print(f"frames sent: {sent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
