"""CPU time by thread group of a process: where a benchmark's CPU goes, per process.

Linux only (``/proc/PID/task``). Threads are grouped by name with digits folded
(``data-plane-kafka-request-handler-3`` and ``-5`` are one group), so a JVM's JIT
compiler, its GC and Kafka's request handlers, or a Python worker's event loop,
decode pool and librdkafka threads, each read as one line. A thread that ended between
two snapshots is missing from the second: its CPU after the first is not counted.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

DIGITS = re.compile(r"\d+")
TICKS = os.sysconf("SC_CLK_TCK")


def snapshot(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of ``pid``: its name and its CPU seconds (user + system) so far."""
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            # Fields after the name in parentheses; utime and stime are the 14th and 15th.
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended while we read it
            continue
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / TICKS)
    return out


def by_group(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds between two snapshots, by thread group, most first."""
    spent: defaultdict[str, float] = defaultdict(float)
    for tid, (name, cpu) in after.items():
        earlier = before.get(tid)
        spent[DIGITS.sub("N", name)] += cpu - (earlier[1] if earlier is not None else 0.0)
    return dict(sorted(spent.items(), key=lambda item: -item[1]))
