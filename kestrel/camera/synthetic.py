"""Synthetic cameras with ground truth: real photographs moving on known paths.

Each camera renders a background and a few *actors*: photographs of people from
scikit-image's bundled data (``astronaut.png``: Eileen Collins; ``camera.png``: the
cameraman), nothing downloaded. An actor walks back and forth across the frame at
its own depth, height and speed, all drawn from the camera's seed, so a frame is a
pure function of (camera, time) and every frame's true boxes and identities are
known exactly (:meth:`SyntheticScene.render`).

The true box of an actor is the person inside its photograph (measured by hand on
the source image, in ``Sprite.person``), scaled and placed as drawn; nearer actors
(lower in the frame) are drawn over farther ones, and each truth says how much of
its box is still visible, so a scorer can leave mostly hidden people out.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from numpy.typing import NDArray

Image = NDArray[np.uint8]


@dataclass(frozen=True)
class Sprite:
    """A photograph, and the box of the person in it (x1, y1, x2, y2, its pixels)."""

    name: str
    image: Image
    person: tuple[int, int, int, int]
    label: str = "person"


@dataclass(frozen=True)
class Truth:
    """One actor in one frame: its identity, class and box in frame pixels."""

    actor_id: int
    label: str
    box: tuple[float, float, float, float]
    #: Share of the box not hidden by nearer actors (0..1).
    visible: float = 1.0


def _data(name: str) -> Image:
    path = importlib.resources.files("skimage") / "data" / name
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"scikit-image's bundled {name} is missing")
    return np.asarray(image, dtype=np.uint8)


@cache
def sprites() -> tuple[Sprite, ...]:
    """The people photographs, cropped to the person and a little around it."""
    astronaut = _data("astronaut.png")[0:512, 0:360]
    cameraman = _data("camera.png")[40:512, 0:300]
    return (
        Sprite("astronaut", astronaut, (18, 10, 352, 512)),
        Sprite("cameraman", cameraman, (8, 18, 282, 472)),
    )


@cache
def background(width: int, height: int) -> Image:
    """A wall over a gravel ground, from scikit-image's textures."""
    wall = cv2.resize(_data("brick.png"), (width, height * 2 // 5))
    ground = cv2.resize(_data("gravel.png"), (width, height - height * 2 // 5))
    tint = np.array([0.85, 0.95, 1.05])  # a warm wall, a cool ground: not grey on grey
    scene = np.vstack([wall * tint, ground * tint[::-1]])
    out: Image = np.clip(scene, 0, 255).astype(np.uint8)
    return out


@dataclass(frozen=True)
class Actor:
    actor_id: int
    sprite: int
    height_px: float  # the person's drawn height
    foot_y: float  # where its feet are: lower in the frame is nearer
    x0: float  # left edge of the person at t = 0
    speed: float  # px/s, signed


def _bounce(x: float, lo: float, hi: float) -> float:
    """``x`` folded into ``[lo, hi]``, as a walker that turns at the edges."""
    span = hi - lo
    if span <= 0:
        return lo
    phase = (x - lo) % (2 * span)
    return lo + (phase if phase <= span else 2 * span - phase)


class SyntheticScene:
    """One synthetic camera: ``actors`` people walking on a background."""

    def __init__(self, seed: int, width: int = 640, height: int = 480, actors: int = 3) -> None:
        self.width, self.height = width, height
        rng = np.random.default_rng(seed)
        people = sprites()
        self.actors = []
        for i in range(actors):
            person_h = float(rng.uniform(0.38, 0.55) * height)
            self.actors.append(
                Actor(
                    actor_id=i,
                    sprite=int(rng.integers(len(people))),
                    height_px=person_h,
                    foot_y=float(rng.uniform(0.72, 0.98) * height),
                    x0=float(rng.uniform(0, width)),
                    speed=float(rng.uniform(30, 90) * rng.choice([-1, 1])),
                )
            )
        # Nearer (lower feet) drawn last, over the others.
        self.actors.sort(key=lambda a: a.foot_y)

    def render(self, t_s: float) -> tuple[Image, list[Truth]]:
        """The frame at ``t_s`` seconds and its true boxes, in drawing order."""
        frame = background(self.width, self.height).copy()
        truths = []
        for actor in self.actors:
            sprite = sprites()[actor.sprite]
            px1, py1, px2, py2 = sprite.person
            scale = actor.height_px / (py2 - py1)
            size = (round(sprite.image.shape[1] * scale), round(sprite.image.shape[0] * scale))
            image = np.asarray(cv2.resize(sprite.image, size), dtype=np.uint8)
            person_w = (px2 - px1) * scale
            # Walkers turn at the frame's edges: always whole in view.
            left = _bounce(actor.x0 + actor.speed * t_s, 0.0, self.width - person_w)
            # Place the photo so that the person's box lands at (left, foot_y - height).
            ox = round(left - px1 * scale)
            oy = round(actor.foot_y - actor.height_px - py1 * scale)
            self._paste(frame, image, ox, oy)
            box = (
                ox + px1 * scale,
                oy + py1 * scale,
                ox + px2 * scale,
                oy + py2 * scale,
            )
            clipped = (
                max(0.0, box[0]),
                max(0.0, box[1]),
                min(float(self.width), box[2]),
                min(float(self.height), box[3]),
            )
            if clipped[2] > clipped[0] and clipped[3] > clipped[1]:
                truths.append(Truth(actor.actor_id, sprite.label, clipped))
        return frame, self._visibility(truths)

    def _visibility(self, truths: list[Truth]) -> list[Truth]:
        """Each box's unhidden share, on a quarter-resolution map of who is in front."""
        owner = np.full((self.height // 4 + 1, self.width // 4 + 1), -1, np.int32)
        cells = []
        for i, truth in enumerate(truths):  # drawing order: later ones are nearer
            x1, y1, x2, y2 = (round(v / 4) for v in truth.box)
            owner[y1:y2, x1:x2] = i
            cells.append(max(1, (y2 - y1) * (x2 - x1)))
        counts = np.bincount(owner[owner >= 0].ravel(), minlength=len(truths))
        return [
            Truth(t.actor_id, t.label, t.box, round(min(1.0, counts[i] / cells[i]), 3))
            for i, t in enumerate(truths)
        ]

    @staticmethod
    def _paste(frame: Image, image: Image, ox: int, oy: int) -> None:
        h, w = image.shape[:2]
        fx1, fy1 = max(ox, 0), max(oy, 0)
        fx2, fy2 = min(ox + w, frame.shape[1]), min(oy + h, frame.shape[0])
        if fx2 > fx1 and fy2 > fy1:
            frame[fy1:fy2, fx1:fx2] = image[fy1 - oy : fy2 - oy, fx1 - ox : fx2 - ox]
