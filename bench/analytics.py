"""``make bench-analytics``: temporal analysis, validated and timed.

Three parts, one run, a table each, all written to ``bench/results/analytics.json``:

1. **Validation** of :func:`kestrel.analytics.attractor.classify` on series with known
   answers: a constant plus noise, sines of periods 8, 20 and 50, the logistic map at
   r = 4 (largest Lyapunov exponent ln 2 per step), the Lorenz system (0.906 per unit
   time), a ramp and a random walk; each estimate beside its known value.
2. **DTW**: Kestrel's compiled DTW (``dtaidistance``) against the pure-Python loop it
   replaced (kept below as the baseline, as it was), same inputs: equal results, time
   per call.
3. **Cost**: the time of each step per series (DTW, LCS and edit distance against the
   built-in shapes, one regime analysis), and the analytics worker itself
   (``faust -A faust_app:analytics worker``, the default rules: every step on) reading
   a backlog of model metrics from the project's broker: metrics (field samples) per
   second against the digest's 10,000.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
from confluent_kafka import Consumer, TopicPartition

from bench import telemetry
from bench.systems import logistic_map, lorenz_x, noisy_constant, noisy_sine
from bench.telemetry import (
    REPO,
    broker_settings,
    messages,
    produce,
    run_consumer_job,
    start_broker,
    start_process,
    stop,
)
from bench.workload import FIELDS
from kestrel.analytics.attractor import classify
from kestrel.analytics.config import load_rules
from kestrel.analytics.dtw import dtw_distance, znormalise
from kestrel.analytics.patterns import match_all
from kestrel.settings import child_environment, load_settings
from kestrel.topics import ANALYTICS_TEMPORAL

RESULTS = REPO / "bench" / "results"
LORENZ_EXPONENT = 0.906
WORKER = [sys.executable, "-m", "faust", "-A", "faust_app:analytics", "worker", "-l", "warn"]


def python_dtw(a: np.ndarray, b: np.ndarray, band: int) -> float:
    """The baseline: Kestrel's DTW as it was, pure Python (|a_i - b_j|, Sakoe-Chiba band)."""
    n, m = len(a), len(b)
    band = max(band, abs(n - m))
    inf = float("inf")
    previous = [inf] * (m + 1)
    previous[0] = 0.0
    for i in range(1, n + 1):
        current = [inf] * (m + 1)
        ai = float(a[i - 1])
        for j in range(max(1, i - band), min(m, i + band) + 1):
            cost = abs(ai - float(b[j - 1]))
            current[j] = cost + min(previous[j], previous[j - 1], current[j - 1])
        previous = current
    return previous[m]


def timed(fn: Callable[[], Any], repeat: int) -> tuple[Any, float]:
    """``fn()``'s result and its median time over ``repeat`` calls (seconds)."""
    times = []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return result, float(np.median(times))


def validation(rng: np.random.Generator) -> list[dict[str, Any]]:
    dt = 0.01
    ramp = 0.05 * np.arange(300) + rng.normal(size=300)
    systems: list[tuple[str, np.ndarray, str, float | None, float | None, float]] = [
        # name, series, expected kind and period, expected exponent (per unit time), step
        ("constant + noise (300)", noisy_constant(300, seed=1), "fixed_point", None, None, 1),
        ("sine, period 8 (300)", noisy_sine(300, 8, seed=8), "periodic", 8, None, 1),
        ("sine, period 20 (300)", noisy_sine(300, 20, seed=20), "periodic", 20, None, 1),
        ("sine, period 50 (300)", noisy_sine(300, 50, seed=50), "periodic", 50, None, 1),
        ("logistic r=4 (3000)", logistic_map(3000), "chaotic", None, math.log(2), 1),
        ("logistic r=4 (300)", logistic_map(300), "chaotic", None, math.log(2), 1),
        ("Lorenz x, dt 0.01 (3000)", lorenz_x(3000, dt), "chaotic", None, LORENZ_EXPONENT, dt),
        ("Lorenz x, dt 0.05 (300)", lorenz_x(300, 0.05), "chaotic", None, LORENZ_EXPONENT, 0.05),
        ("ramp + noise (300)", ramp, "drifting", None, None, 1),
        ("random walk (300)", np.cumsum(rng.normal(size=300)), "drifting", None, None, 1),
    ]
    rows = []
    for name, series, kind, period, exponent, step in systems:
        regime, seconds = timed(lambda series=series: classify(series), 3)  # type: ignore[misc]
        row: dict[str, Any] = {
            "system": name,
            "expected": kind,
            "got": regime.kind,
            "correct": regime.kind == kind,
            "period": period,
            "period_estimate": regime.period,
            "exponent": exponent,  # per step for the maps, per unit time for Lorenz
            "exponent_estimate": regime.lyapunov / step if regime.lyapunov is not None else None,
            "lag": regime.lag,
            "dimension": regime.dimension,
            "determinism": regime.determinism,
            "ms": seconds * 1000,
        }
        if period is not None and regime.period is not None:
            row["period_error"] = regime.period / period - 1
        if row["exponent"] is not None and row["exponent_estimate"] is not None:
            row["exponent_error"] = row["exponent_estimate"] / row["exponent"] - 1
        rows.append(row)
    return rows


def repeatability(runs: int) -> dict[str, Any]:
    """How often a kind of series gets its regime, over ``runs`` seeds (300 points)."""
    kinds: dict[str, tuple[Callable[[int], np.ndarray], str]] = {
        "noise -> fixed_point": (lambda seed: noisy_constant(300, seed=seed), "fixed_point"),
        "random walk -> drifting": (
            lambda seed: np.cumsum(np.random.default_rng(seed).normal(size=300)),
            "drifting",
        ),
        "sine, period 5-70 -> periodic": (
            lambda seed: noisy_sine(300, 5 + seed % 66, seed=seed),
            "periodic",
        ),
    }
    return {
        name: sum(classify(make(seed)).kind == want for seed in range(runs)) / runs
        for name, (make, want) in kinds.items()
    }


def dtw_comparison(rng: np.random.Generator, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for n in (30, 60, 120, 300):
        pairs = [(rng.normal(size=n), rng.normal(size=n)) for _ in range(20)]
        band = n // 10 + 1
        ours = [dtw_distance(a, b, band) for a, b in pairs]
        base = [python_dtw(a, b, band) for a, b in pairs]
        _, t_ours = timed(lambda p=pairs, w=band: [dtw_distance(a, b, w) for a, b in p], repeat)  # type: ignore[misc]
        _, t_base = timed(lambda p=pairs, w=band: [python_dtw(a, b, w) for a, b in p], repeat)  # type: ignore[misc]
        rows.append(
            {
                "n": n,
                "max_abs_difference": float(np.max(np.abs(np.subtract(ours, base)))),
                "python_us": t_base / len(pairs) * 1e6,
                "dtaidistance_us": t_ours / len(pairs) * 1e6,
                "speedup": t_base / t_ours,
            }
        )
    return rows


def step_costs(rng: np.random.Generator, repeat: int) -> dict[str, float]:
    """Microseconds per series of each step, with the default rules' settings."""
    rules = load_rules()
    patterns, p = rules.patterns.all_shapes, rules.patterns
    recent = rng.normal(size=p.length)
    recent[p.length // 2 :] += 8  # a step: every measure has something to find
    costs = {}
    for measure, cut in p.thresholds.items():
        _, t = timed(
            lambda cut=cut, measure=measure: match_all(  # type: ignore[misc]
                recent, patterns, {measure: cut}, p.sax_segments, p.sax_alphabet
            ),
            repeat,
        )
        costs[f"match_{measure}_us"] = t * 1e6
    _, t = timed(
        lambda: match_all(recent, patterns, p.thresholds, p.sax_segments, p.sax_alphabet), repeat
    )
    costs["match_all_measures_us"] = t * 1e6
    window = noisy_sine(rules.regimes.window, 20, seed=3)
    _, t = timed(lambda: classify(window), max(3, repeat // 10))
    costs["regime_us"] = t * 1e6
    assert znormalise(recent) is not None
    return costs


def count_analyses(settings: Any) -> tuple[int, int]:
    """Records on analytics.temporal, and how many carry a regime (the step ran)."""
    topic = ANALYTICS_TEMPORAL.name(settings)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"count-{settings.namespace}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        total = with_regime = 0
        done: set[int] = set()
        deadline = time.monotonic() + 60
        while len(done) < len(parts) and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is None:
                    total += 1
                    with_regime += orjson.loads(message.value() or b"{}").get("regime") is not None
            for p in parts:
                position = consumer.position([TopicPartition(topic, p)])[0].offset
                if position >= ends[p]:
                    done.add(p)
        return total, with_regime
    finally:
        consumer.close()


def worker_throughput(sources: int, seconds: int) -> dict[str, Any]:
    """The analytics worker draining ``seconds`` of event time from ``sources`` sources."""
    workdir = Path(tempfile.mkdtemp(prefix="kestrel-bench-analytics-"))
    broker = start_broker(workdir, load_settings())
    try:
        settings = broker_settings(
            broker, workdir, "benchan", topic_partitions=2, commit_interval_s=0.5
        )
        ticks = seconds * 60 // telemetry.ROWS
        batch = messages(sources, 0, ticks, seed=1)
        total, samples_per_message = len(batch), telemetry.ROWS * len(FIELDS)
        produce(settings, batch)
        del batch
        env = child_environment(settings, PYTHONUNBUFFERED="1")
        job, worker, rss = run_consumer_job(
            "analytics worker",
            settings,
            settings.app_id("analytics"),
            total,
            samples_per_message,
            lambda: start_process(WORKER, env, workdir / "analytics-worker.log"),
            timeout_s=1800,
        )
        peak = rss.stop()
        stop(worker)
        analyses, regimes = count_analyses(settings)
        offered = sources * 60 * len(FIELDS)
        return {
            "sources": sources,
            "event_seconds": seconds,
            "messages": total,
            "metrics": total * samples_per_message,
            "metrics_per_s": job["samples_per_s"],
            "messages_per_s": job["messages_per_s"],
            "event_rate_metrics_per_s": offered,
            "peak_rss_mb": peak,
            "analyses": analyses,
            "analyses_with_a_regime": regimes,
        }
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=20, help="60 Hz model sources")
    parser.add_argument(
        "--seconds",
        type=int,
        default=420,
        help="event time of the backlog (the default rules read regimes over 300 s: past "
        "that every step runs)",
    )
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--output", type=Path, default=RESULTS / "analytics.json")
    args = parser.parse_args()
    rng = np.random.default_rng(42)

    checks = validation(rng)
    print(f"\n{'system':28}{'expected':>12}{'got':>12}{'period':>16}{'exponent':>22}{'ms':>8}")
    for r in checks:
        period = (
            f"{r['period']} / {r['period_estimate']:.2f}"
            if r["period"] is not None and r["period_estimate"] is not None
            else "-"
        )
        exponent = (
            f"{r['exponent']:.3f} / {r['exponent_estimate']:.3f} ({r['exponent_error']:+.0%})"
            if "exponent_error" in r
            else "-"
        )
        print(
            f"{r['system']:28}{r['expected']:>12}{r['got']:>12}{period:>16}{exponent:>22}"
            f"{r['ms']:>8.1f}"
        )
    print("(period: known / estimated, samples; exponent: known / estimated per unit time)")
    repeat = repeatability(50)
    print("over 50 seeds: " + "; ".join(f"{k} {v:.0%}" for k, v in repeat.items()))

    dtw = dtw_comparison(rng, max(3, args.repeat // 10))
    print(f"\n{'DTW n':>6}{'Python us':>12}{'dtaidistance us':>18}{'speedup':>9}{'max |diff|':>12}")
    for r in dtw:
        print(
            f"{r['n']:>6}{r['python_us']:>12.1f}{r['dtaidistance_us']:>18.1f}"
            f"{r['speedup']:>8.1f}x{r['max_abs_difference']:>12.2e}"
        )

    costs = step_costs(rng, args.repeat)
    print("\nper series: " + ", ".join(f"{k} {v:,.0f}" for k, v in costs.items()))

    worker = worker_throughput(args.sources, args.seconds)
    print(
        f"\nanalytics worker, default rules (every step on): "
        f"{worker['metrics_per_s']:,.0f} metrics/s ({worker['messages_per_s']:,.0f} messages/s) "
        f"over {worker['metrics']:,} metrics of {worker['sources']} sources; "
        f"the digest's target 10,000 metrics/s: "
        f"{'met' if worker['metrics_per_s'] >= 10_000 else 'not met'}; peak RSS "
        f"{worker['peak_rss_mb']:.0f} MB; {worker['analyses']} temporal analyses published, "
        f"{worker['analyses_with_a_regime']} with a regime"
    )
    result = {
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {platform.platform()}",
        "validation": checks,
        "repeatability_50_seeds": repeat,
        "dtw": dtw,
        "step_costs": costs,
        "worker": worker,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
