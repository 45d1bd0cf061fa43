"""Per-message partial statistics: what the columnar baselines put into window state.

A message of the telemetry benchmark carries a batch of samples as columns
(``{"samples": {"timestamp": [...], "data": {field: [...]}}}``). An expert writing the
job for Quix Streams or plain Faust does not expand it into one row per sample and
run every aggregator on each: they summarise each batch once, with NumPy, per 1 s
window the batch touches (a 1 s window lies inside one 10 s and one 5 min window, so
the same chunks serve all three), and merge those summaries into window state. That
is one state update per chunk and window instead of one per sample and statistic.

A partial per field: ``[count, sum, min, max, last, last_ts, buckets]`` with
``buckets`` the DDSketch bucket counts keyed ``"p<k>"`` / ``"n<k>"`` / ``"z"`` (string
keys: both frameworks keep state as JSON). Imports nothing but NumPy and
:mod:`tables.sketch`, so that both baselines' virtualenvs can import it.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from tables.sketch import KEY_SHIFT, DDSketch, bucket_keys

Partial = list[Any]  # [count, sum, min, max, last, last_ts, {bucket: count}]


def chunks(message: dict[str, Any]) -> list[tuple[int, dict[str, Partial]]]:
    """The message's samples cut at 1 s boundaries: (first timestamp, partials) each."""
    samples = message.get("samples")
    if samples is None:  # a single sample
        samples = {
            "timestamp": [message["timestamp"]],
            "data": {k: [v] for k, v in message["data"].items()},
        }
    timestamps = np.asarray(samples["timestamp"], dtype=np.int64)
    if timestamps.size == 0:
        return []
    seconds = timestamps // 1000
    cuts = np.flatnonzero(np.diff(seconds)) + 1
    bounds = [0, *cuts.tolist(), timestamps.size]
    columns = {
        name: np.asarray([np.nan if v is None else v for v in column], dtype=np.float64)
        for name, column in samples["data"].items()
    }
    out = []
    for lo, hi in itertools.pairwise(bounds):
        ts = timestamps[lo:hi]
        partials = {}
        for name, column in columns.items():
            values = column[lo:hi]
            keep = np.isfinite(values)
            if not keep.any():
                continue
            values, kept_ts = values[keep], ts[keep]
            last = int(np.argmax(kept_ts))
            keys, counts = np.unique(bucket_keys(values), return_counts=True)
            partials[name] = [
                int(values.size),
                float(values.sum()),
                float(values.min()),
                float(values.max()),
                float(values[last]),
                int(kept_ts[last]),
                {_name(int(k)): int(c) for k, c in zip(keys, counts, strict=True)},
            ]
        out.append((int(ts[0]), partials))
    return out


def _name(key: int) -> str:
    if key == 0:
        return "z"
    return f"p{key - KEY_SHIFT}" if key > 0 else f"n{-key - KEY_SHIFT}"


def merge(state: dict[str, Partial] | None, partials: dict[str, Partial]) -> dict[str, Partial]:
    """Fold a chunk's partials into a window's state (in place; returned)."""
    state = {} if state is None else state
    for name, (count, total, low, high, last, last_ts, buckets) in partials.items():
        old = state.get(name)
        if old is None:
            state[name] = [count, total, low, high, last, last_ts, dict(buckets)]
            continue
        old[0] += count
        old[1] += total
        old[2] = min(old[2], low)
        old[3] = max(old[3], high)
        if last_ts >= old[5]:
            old[4], old[5] = last, last_ts
        into = old[6]
        for bucket, n in buckets.items():
            into[bucket] = into.get(bucket, 0) + n
    return state


def sketch_of(buckets: dict[str, int]) -> DDSketch:
    """The DDSketch of bucket counts keyed as in a partial."""
    return DDSketch.from_json(
        {
            "p": [(int(k[1:]), c) for k, c in buckets.items() if k[0] == "p"],
            "n": [(int(k[1:]), c) for k, c in buckets.items() if k[0] == "n"],
            "z": buckets.get("z", 0),
        }
    )


def final(state: dict[str, Partial]) -> dict[str, dict[str, Any]]:
    """The window's statistics per field, as Kestrel's aggregates carry them."""
    out = {}
    for name, (count, total, low, high, last, _, buckets) in state.items():
        quantiles = sketch_of(buckets).quantiles((0.5, 0.95, 0.99))
        out[name] = {
            "count": count,
            "sum": total,
            "mean": total / count,
            "min": low,
            "max": high,
            "last": last,
            **{
                key: None if q is None else min(max(q, low), high)
                for key, q in zip(("p50", "p95", "p99"), quantiles, strict=True)
            },
        }
    return out
