"""Zones and counting lines: which zones hold an object, and which lines it crossed.

An object's position is the bottom centre of its box (where it stands). A track
crosses a line when the segment from its previous position to its current one
intersects the line segment; the direction is "in" when it moves from the left of
the line to its right, looking from ``a`` towards ``b`` (image coordinates, y down).
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]


def foot(box: Sequence[float]) -> Point:
    """The bottom centre of an x1, y1, x2, y2 box."""
    return (box[0] + box[2]) / 2, box[3]


def inside(point: Point, polygon: Sequence[Sequence[float]]) -> bool:
    """Ray casting; a point on an edge counts as inside or not, consistently."""
    x, y = point
    hit = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i][0], polygon[i][1]
        x2, y2 = polygon[(i + 1) % n][0], polygon[(i + 1) % n][1]
        if (y1 > y) != (y2 > y):
            cross_x = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < cross_x:
                hit = not hit
    return hit


def _side(a: Point, b: Point, p: Point) -> float:
    """> 0: p is right of a->b in image coordinates (y down); < 0: left; 0: on it."""
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def crossing(a: Point, b: Point, before: Point, after: Point) -> str | None:
    """ "in", "out", or None: did the move ``before -> after`` cross segment ``a -> b``?"""
    s1, s2 = _side(a, b, before), _side(a, b, after)
    if s1 == 0 or s2 == 0 or (s1 > 0) == (s2 > 0):
        return None
    t1, t2 = _side(before, after, a), _side(before, after, b)
    if (t1 > 0) == (t2 > 0) and t1 != 0 and t2 != 0:
        return None  # the line's segment ends before the path
    return "in" if s1 < 0 < s2 else "out"
