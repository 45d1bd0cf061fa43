"""The telemetry job written as Quix Streams' docs recommend: the benchmark's baseline.

Same input topic and messages as Kestrel, same windows (1 s, 10 s, 5 min tumbling,
1 s grace, event time from each sample), same statistics per field: count, sum,
mean, min, max, latest, and p50/p95/p99 from the same DDSketch buckets (Quix Streams
has no quantile aggregator, so it is a custom ``Aggregator``, the documented way).
A batched message is expanded into one row per sample with ``apply(expand=True)``.

Runs in its own virtualenv (``.venv-quix``): quixstreams pins older confluent-kafka
and pydantic than Kestrel uses. Run by ``bench/telemetry.py``, not by hand.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import quixstreams.dataframe.windows.aggregations as agg
from quixstreams import Application

from bench.workload import FIELDS
from tables.sketch import ALPHA, GAMMA, LOG_GAMMA, MIN_INDEXABLE, DDSketch

assert ALPHA and GAMMA  # the same sketch parameters as Kestrel's


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
        sketch = DDSketch.from_json(
            {
                "p": [(int(k[1:]), c) for k, c in value.items() if k[0] == "p"],
                "n": [(int(k[1:]), c) for k, c in value.items() if k[0] == "n"],
                "z": value.get("z", 0),
            }
        )
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
    parser.add_argument("--variant", choices=["agg", "one-aggregator"], default="agg")
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
    sdf = sdf.apply(rows, expand=True)
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: value["ts"])
    aggregations: dict[str, Any] = {}
    if args.variant == "one-aggregator":
        aggregations["fields"] = AllFields()
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
