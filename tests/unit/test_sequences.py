"""SAX words, LCS and edit distance, and the matcher over every measure."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kestrel.analytics.dtw import REFERENCE_PATTERNS
from kestrel.analytics.patterns import match_all
from kestrel.analytics.sequences import distance, sax

CUTS = {"dtw": 0.45, "lcs": 0.3, "edit": 0.4}  # the default rules file's


def test_sax_maps_equal_pieces_to_equally_likely_letters() -> None:
    assert sax(np.array([0.0, 0.0, 1.0, 1.0]), 2, 2) == "ab"
    assert sax(np.arange(100, dtype=np.float64), 5, 5) == "abcde"
    assert sax(np.full(10, 3.0), 5, 5) is None  # flat: no shape, no word


def test_lcs_allows_gaps_and_edit_counts_every_change() -> None:
    assert distance("lcs", "abcde", "abxde") == 0.2
    assert distance("lcs", "abcde", "bcdea") == 0.2  # "bcde" in common: a shift costs one
    assert distance("edit", "abcde", "bcdea") == 0.4  # a deletion and an insertion
    assert distance("edit", "aaaaa", "aaaaa") == 0.0


def test_calibration_noise_never_matches_and_steps_match_by_every_measure() -> None:
    """The figures in kestrel/analytics/sequences.py's docstring, recomputed."""
    rng = np.random.default_rng(12345)
    for _ in range(1000):
        matches, _ = match_all(rng.normal(size=30), REFERENCE_PATTERNS, CUTS, 15, 7)
        assert matches == []
    found = dict.fromkeys(CUTS, 0)
    for _ in range(200):
        step = np.r_[rng.normal(size=15), rng.normal(size=15) + rng.uniform(5, 40)]
        matches, _ = match_all(step, REFERENCE_PATTERNS, CUTS, 15, 7)
        for match in matches:
            found[match.measure] += match.pattern == "step_up"
    assert found["dtw"] >= 190 and found["lcs"] >= 170 and found["edit"] >= 190, found


finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(finite, min_size=4, max_size=60),
    st.integers(2, 20),
    st.integers(2, 26),
)
def test_any_finite_series_gets_a_word_and_distances_in_0_1(
    values: list[float], segments: int, alphabet: int
) -> None:
    series = np.asarray(values, dtype=np.float64)
    word = sax(series, segments, alphabet)
    if word is not None:
        assert len(word) == min(segments, len(values))
        assert all("a" <= letter < chr(ord("a") + alphabet) for letter in word)
    matches, distances = match_all(series, REFERENCE_PATTERNS, CUTS, segments, alphabet)
    for per in distances.values():
        assert all(math.isfinite(d) and d >= 0 for d in per.values())
    for match in matches:
        assert match.distance <= match.threshold
        assert match.measure == "dtw" or 0 <= match.distance <= 1
