"""A watched field's recent shape against named patterns, by every configured measure.

The measures: ``dtw`` (:mod:`kestrel.analytics.dtw`, on the z-normalised values),
``lcs`` and ``edit`` (:mod:`kestrel.analytics.sequences`, on SAX words). Each has
its own cut-off; a pattern *matches by a measure* when it is that measure's closest
pattern and within its cut-off. Every match says which measure, its distance and the
cut-off, so a reader can weigh them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from kestrel.analytics.dtw import FloatArray, dtw_distance, resampled_reference, znormalise
from kestrel.analytics.sequences import MEASURES, symbolic_distances


@dataclass(frozen=True)
class Match:
    pattern: str
    measure: str
    distance: float
    threshold: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def match_all(
    recent: FloatArray,
    patterns: Mapping[str, tuple[float, ...]],
    thresholds: Mapping[str, float],
    segments: int,
    alphabet: int,
) -> tuple[list[Match], dict[str, dict[str, float]]]:
    """The matches of ``recent`` by each measure in ``thresholds``, and every distance.

    A flat series has no shape: no matches and no distances.
    """
    normal = znormalise(recent)
    if normal is None:
        return [], {}
    n = len(normal)
    distances: dict[str, dict[str, float]] = {}
    if "dtw" in thresholds:
        per: dict[str, float] = {}
        for name, shape in patterns.items():
            reference = resampled_reference(tuple(shape), n)
            if reference is not None:
                per[name] = dtw_distance(normal, reference, n // 10 + 1) / n
        distances["dtw"] = per
    symbolic = tuple(m for m in MEASURES if m in thresholds)
    if symbolic:
        distances.update(symbolic_distances(normal, dict(patterns), symbolic, segments, alphabet))
    matches = []
    for measure, per in distances.items():
        if not per:
            continue
        best = min(per, key=per.__getitem__)
        if per[best] <= thresholds[measure]:
            matches.append(Match(best, measure, per[best], thresholds[measure]))
    return matches, distances
