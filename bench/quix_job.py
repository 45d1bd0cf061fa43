"""The telemetry job written for Quix Streams: the benchmark's peer baseline.

Same input topic and messages as Kestrel, same windows (1 s, 10 s, 5 min tumbling,
1 s grace, event time from the samples), same statistics per field: count, sum,
mean, min, max, latest, and p50/p95/p99 from the same DDSketch buckets (Quix Streams
has no quantile aggregator, so it is a custom ``Aggregator``, the documented way).
State: Quix's own, RocksDB with a changelog topic; Python's default GC.

Three variants (``--variant``):

* ``agg``: as the docs show it: a batched message expanded into one row per sample
  (``apply(expand=True)``) and the built-in aggregators, 63 of them, per row;
* ``one-aggregator``: the rows, but one custom aggregator for every statistic of every
  field (one state update per row and window instead of 63);
* ``columnar``: how an expert writes it for columnar batch messages: each message
  summarised once with NumPy per 1 s window it touches (``bench/partials.py``), one
  row per such chunk, and one aggregator that merges the summaries: one state update
  per chunk and window. The fastest we found; it is the one compared.

Runs in its own virtualenv (``.venv-quix``): quixstreams pins older confluent-kafka
and pydantic than Kestrel uses. Run by ``bench/telemetry.py``, not by hand.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import quixstreams.dataframe.windows.aggregations as agg
from quixstreams import Application

from bench.partials import chunks, final, merge, sketch_of
from bench.workload import FIELDS
from tables.sketch import ALPHA, GAMMA, LOG_GAMMA, MIN_INDEXABLE

assert ALPHA and GAMMA  # the same sketch parameters as Kestrel's


VARIANTS = ["agg", "one-aggregator", "columnar"]


class Quantiles(agg.Aggregator):
    """p50/p95/p99 of a column from DDSketch bucket counts kept in window state."""

    def initialize(self) -> dict[str, int]:
        return {}

    def agg(self, old: dict[str, int], new: Any, timestamp: int) -> dict[str, int]:
        value = new.get(self.column)
        if value is None:
            return old
        magnitude = abs(value)
        if magnitude < MIN_INDEXABLE:
            bucket = "z"
        else:
            key = math.ceil(math.log(magnitude) / LOG_GAMMA)
            bucket = f"{'p' if value > 0 else 'n'}{key}"
        old[bucket] = old.get(bucket, 0) + 1
        return old

    def result(self, value: dict[str, int]) -> dict[str, float | None]:
        sketch = sketch_of(value)
        return {f"p{round(q * 100)}": sketch.quantile(q) for q in (0.5, 0.95, 0.99)}


class AllFields(agg.Aggregator):
    """Every statistic of every field in one state value: one state update per row.

    The tuned variant: Quix keeps one state entry per aggregator per window, so the
    recommended ``.agg()`` with 63 aggregators does 63 state updates per row.
    """

    def initialize(self) -> dict[str, list[Any]]:
        return {}

    def agg(self, old: dict[str, list[Any]], new: Any, timestamp: int) -> dict[str, list[Any]]:
        for name in FIELDS:
            value = new.get(name)
            if value is None:
                continue
            stats = old.get(name)
            if stats is None:  # count, sum, min, max, last, last_ts, buckets
                stats = old[name] = [0, 0.0, value, value, value, timestamp, {}]
            stats[0] += 1
            stats[1] += value
            stats[2] = min(stats[2], value)
            stats[3] = max(stats[3], value)
            if timestamp >= stats[5]:
                stats[4], stats[5] = value, timestamp
            magnitude = abs(value)
            if magnitude < MIN_INDEXABLE:
                bucket = "z"
            else:
                bucket = f"{'p' if value > 0 else 'n'}{math.ceil(math.log(magnitude) / LOG_GAMMA)}"
            stats[6][bucket] = stats[6].get(bucket, 0) + 1
        return old

    def result(self, value: dict[str, list[Any]]) -> dict[str, Any]:
        out = {}
        for name, (count, total, low, high, last, _, buckets) in value.items():
            quantiles = Quantiles(name).result(buckets)
            out[name] = {
                "count": count,
                "sum": total,
                "mean": total / count,
                "min": low,
                "max": high,
                "last": last,
                **quantiles,
            }
        return out


class MergePartials(agg.Aggregator):
    """Folds a chunk's per-field summaries into the window's (bench/partials.py)."""

    def initialize(self) -> dict[str, Any]:
        return {}

    def agg(self, old: dict[str, Any], new: Any, timestamp: int) -> dict[str, Any]:
        return merge(old, new["partials"])

    def result(self, value: dict[str, Any]) -> dict[str, Any]:
        return final(value)


def chunk_rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per 1 s chunk of a batched message, with its fields' summaries."""
    return [{"ts": ts, "partials": partials} for ts, partials in chunks(batch)]


def rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per sample of a batched envelope (or the envelope's single sample)."""
    samples = batch.get("samples")
    if samples is None:
        return [{"ts": batch["timestamp"], **batch["data"]}]
    columns = samples["data"]
    return [
        {"ts": ts, **{name: column[i] for name, column in columns.items()}}
        for i, ts in enumerate(samples["timestamp"])
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--variant", choices=VARIANTS, default="columnar")
    args = parser.parse_args()

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=0.5,
        state_dir=args.state_dir,
        loglevel="WARNING",
    )
    source = app.topic(args.topic, value_deserializer="json")
    output = app.topic(args.output, value_serializer="json")
    sdf = app.dataframe(source)
    sdf = sdf.apply(chunk_rows if args.variant == "columnar" else rows, expand=True)
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: value["ts"])
    aggregations: dict[str, Any] = {}
    if args.variant == "one-aggregator":
        aggregations["fields"] = AllFields()
    if args.variant == "columnar":
        aggregations["fields"] = MergePartials()
    for name in FIELDS if args.variant == "agg" else []:
        aggregations[f"{name}.count"] = agg.Count(name)
        aggregations[f"{name}.sum"] = agg.Sum(name)
        aggregations[f"{name}.mean"] = agg.Mean(name)
        aggregations[f"{name}.min"] = agg.Min(name)
        aggregations[f"{name}.max"] = agg.Max(name)
        aggregations[f"{name}.last"] = agg.Latest(name)
        aggregations[f"{name}.quantiles"] = Quantiles(name)
    for size_ms, label in ((1_000, "1s"), (10_000, "10s"), (300_000, "5m")):
        (
            sdf.tumbling_window(size_ms, grace_ms=1_000, name=f"metrics-{label}")
            .agg(**aggregations)
            .final()
            .to_topic(output)
        )
    app.run()


if __name__ == "__main__":
    main()
