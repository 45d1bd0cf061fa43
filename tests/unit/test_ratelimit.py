"""The per-source budget on event time: never over, and the same after a restore."""

from __future__ import annotations

from collections import Counter

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from kestrel.ratelimit import SourceRateLimiter

messages = st.lists(
    st.tuples(
        st.sampled_from(["model:a", "model:b"]),
        st.lists(st.integers(min_value=0, max_value=40_000), min_size=0, max_size=80),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_no_second_of_any_source_ever_admits_more_than_the_budget(
    stream: list[tuple[str, list[int]]],
) -> None:
    limiter = SourceRateLimiter(60, horizon_s=100)
    admitted: Counter[tuple[str, int]] = Counter()
    for source, timestamps in stream:
        if limiter.admit(source, timestamps):
            admitted.update((source, ts // 1000) for ts in timestamps)
    assert all(n <= 60 for n in admitted.values())


@settings(max_examples=300, deadline=None)
@given(messages, st.integers(min_value=0, max_value=40))
def test_a_limiter_restored_from_its_counts_decides_as_one_that_never_stopped(
    stream: list[tuple[str, list[int]]], cut: int
) -> None:
    whole = SourceRateLimiter(60)
    expected = [whole.admit(source, ts) for source, ts in stream]
    first = SourceRateLimiter(60)
    got = [first.admit(source, ts) for source, ts in stream[:cut]]
    second = SourceRateLimiter(60)
    for source in ("model:a", "model:b"):
        counts = orjson.loads(orjson.dumps(first.counts(source), option=orjson.OPT_NON_STR_KEYS))
        second.restore(source, counts)
    got += [second.admit(source, ts) for source, ts in stream[cut:]]
    assert got == expected
