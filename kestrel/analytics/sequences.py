"""Pattern matching on symbols: SAX words compared by LCS and by edit distance.

A series is symbolised with SAX (Lin, Keogh, Lonardi & Chiu 2003): z-normalised (a
flat series has no shape and no word), averaged over ``segments`` equal pieces
(piecewise aggregate approximation), and each piece's mean mapped to one of
``alphabet`` letters by the breakpoints that cut the standard normal into equally
likely intervals ('a' lowest). A reference shape, resampled to the series' length as
for DTW, gets the same treatment; its word is cached per (shape, length, segments,
alphabet).

Two words are compared by

* **LCS**: ``1 - |longest common subsequence| / length`` (letters in order, gaps
  allowed: a shape whose parts come a little early or late still shares them);
* **edit distance**: Levenshtein's, divided by the length (insertions, deletions and
  substitutions of letters).

Both run in ``rapidfuzz``'s compiled code and lie in [0, 1]: 0 is the same word.
Calibration of the default cut-offs (``tests/unit/test_sequences.py`` repeats it):
30-point windows, 15 segments, 7 letters, LCS 0.3, edit 0.4 (DTW 0.45). White noise
matched no shape by any measure in 1000 windows; steps of 5 to 40 sigma matched
``step_up`` by DTW in 200 of 200, by LCS in 185, by edit distance in 199; one-point
spikes of 10 to 60 sigma matched ``spike`` by DTW in 196, by LCS in 4, by edit
distance in 74: averaging over segments dilutes a single point, so for spikes the
symbols add little and DTW decides.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from rapidfuzz.distance import LCSseq, Levenshtein
from scipy.stats import norm

from kestrel.analytics.dtw import FloatArray, resampled_reference, znormalise

MEASURES = ("lcs", "edit")


@lru_cache(maxsize=16)
def breakpoints(alphabet: int) -> FloatArray:
    """The ``alphabet - 1`` cuts of the standard normal into equally likely intervals."""
    cuts: FloatArray = norm.ppf(np.arange(1, alphabet) / alphabet)
    return cuts


def sax_normalised(normal: FloatArray, segments: int, alphabet: int) -> str:
    """The SAX word of an already z-normalised series."""
    pieces = np.array_split(normal, min(segments, len(normal)))
    means = np.array([piece.mean() for piece in pieces])
    letters = np.searchsorted(breakpoints(alphabet), means)
    return "".join(chr(ord("a") + int(i)) for i in letters)


def sax(values: FloatArray, segments: int, alphabet: int) -> str | None:
    """The SAX word of ``values``; None for a flat series."""
    normal = znormalise(np.asarray(values, dtype=np.float64))
    return None if normal is None else sax_normalised(normal, segments, alphabet)


@lru_cache(maxsize=256)
def reference_word(shape: tuple[float, ...], n: int, segments: int, alphabet: int) -> str | None:
    reference = resampled_reference(shape, n)
    return None if reference is None else sax_normalised(reference, segments, alphabet)


def distance(measure: str, a: str, b: str) -> float:
    if measure == "lcs":
        return float(LCSseq.normalized_distance(a, b))
    if measure == "edit":
        return float(Levenshtein.normalized_distance(a, b))
    raise ValueError(f"unknown measure {measure!r}: one of {', '.join(MEASURES)}")


def symbolic_distances(
    normal: FloatArray,
    patterns: dict[str, tuple[float, ...]],
    measures: tuple[str, ...],
    segments: int,
    alphabet: int,
) -> dict[str, dict[str, float]]:
    """Per measure, the distance of the (z-normalised) series' word to each pattern's."""
    word = sax_normalised(normal, segments, alphabet)
    out: dict[str, dict[str, float]] = {measure: {} for measure in measures}
    for name, shape in patterns.items():
        reference = reference_word(tuple(shape), len(normal), segments, alphabet)
        if reference is None:
            continue
        for measure in measures:
            out[measure][name] = distance(measure, word, reference)
    return out
