"""A stage's own numbers: counts and a bounded reservoir of latencies."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson


class LatencyReservoir:
    """Recent latencies (ms): a fixed ring of the last ``size``, read over ``horizon_s``.

    Percentiles cover only what arrived in the last ``horizon_s`` seconds, so they say
    how the stage is doing now, not how long a backlog once waited; memory is fixed.
    """

    def __init__(self, size: int = 65_536, horizon_s: float = 10.0) -> None:
        self._values = np.zeros(size, dtype=np.float64)
        self._times = np.full(size, -np.inf)
        self._count = 0
        self.horizon_s = horizon_s

    def add(self, latency_ms: float, now: float | None = None) -> None:
        i = self._count % self._values.size
        self._values[i] = latency_ms
        self._times[i] = time.monotonic() if now is None else now
        self._count += 1

    def percentiles(self, *qs: float, now: float | None = None) -> list[float | None]:
        now = time.monotonic() if now is None else now
        recent = self._values[self._times >= now - self.horizon_s]
        if recent.size == 0:
            return [None for _ in qs]
        return [float(v) for v in np.percentile(recent, [q * 100 for q in qs])]

    @property
    def count(self) -> int:
        """Latencies recorded since start, recent or not."""
        return self._count


def write_stats(path: Path, stats: dict[str, Any]) -> None:
    """Replace ``path`` atomically, so a reader never sees half a file."""
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_bytes(orjson.dumps(stats, option=orjson.OPT_INDENT_2))
    partial.replace(path)
