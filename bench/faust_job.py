"""The telemetry job in plain Faust: windowed tables, as Faust's docs show them.

The benchmark's other peer baseline: what Kestrel's own state and windowing buy over
Faust's. Same input topic and messages, same windows (1 s, 10 s, 5 min tumbling,
closed 1 s after their end), same statistics (``bench/partials.py``: each message
summarised once with NumPy per 1 s window it touches, the columnar way an expert
would; one table update per chunk and window). State: Faust's tables, in memory with
their changelog topics (``store="memory://"``, Faust's default), at-least-once; a
closed window's statistics go to the output topic from ``on_window_close``. Python's
default GC.

Run by ``bench/telemetry.py`` (``faust -A bench.faust_job worker``), configured by
``BENCH_FAUST_*`` environment variables. With ``BENCH_FAUST_EMPTY=1`` its agent does
nothing with the messages it is handed: Faust's own ceiling for this input.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import faust
import orjson

from bench.partials import chunks, final, merge

GROUP = os.environ.get("BENCH_FAUST_GROUP", "bench-faust")
PARTITIONS = int(os.environ.get("BENCH_FAUST_PARTITIONS", "4"))
WINDOWS = ((1.0, "1s"), (10.0, "10s"), (300.0, "5m"))
GRACE_S = 1.0

app = faust.App(
    GROUP,
    broker=f"kafka://{os.environ.get('BENCH_FAUST_BOOTSTRAP', '127.0.0.1:9092')}",
    store="memory://",
    topic_partitions=PARTITIONS,
    broker_commit_interval=0.5,
    broker_commit_every=500,  # its interval timer waits while the agent is busy
    table_cleanup_interval=1.0,  # how often closed windows are found (default 30 s)
    web_enabled=False,
    datadir=os.environ.get("BENCH_FAUST_DATADIR", "/tmp/bench-faust"),
)
source = app.topic(
    os.environ.get("BENCH_FAUST_TOPIC", "metrics.model"),
    key_serializer="raw",
    value_serializer="raw",
)
output = app.topic(os.environ.get("BENCH_FAUST_OUTPUT", "bench.faust"), value_serializer="json")

# Event time of the chunk being applied: Faust asks the table's relative_to handler
# for the timestamp of each read and write (a message's chunks may span two windows).
_chunk_s = [0.0]


def chunk_time(event: Any = None) -> float:
    return _chunk_s[0]


def closer(label: str) -> Any:
    def closed(key: tuple[str, tuple[float, float]], value: dict[str, Any]) -> None:
        name, (start, _) = key
        statistics = {"source": name, "window": label, "start_ms": int(start * 1000)}
        output.send_soon(key=name, value={**statistics, "fields": final(value)})

    return closed


EMPTY = os.environ.get("BENCH_FAUST_EMPTY") == "1"

tables = (
    []
    if EMPTY
    else [
        app.Table(
            f"metrics-{label}",
            default=dict,
            partitions=PARTITIONS,
            on_window_close=closer(label),
        )
        .tumbling(timedelta(seconds=size), expires=timedelta(seconds=size + GRACE_S))
        .relative_to(chunk_time)  # type: ignore[attr-defined]  # WindowWrapper has it; its T not
        for size, label in WINDOWS
    ]
)


@app.agent(source)
async def aggregate(stream: Any) -> None:
    if EMPTY:
        async for _ in stream:  # Faust acks each message as the next is taken
            pass
    async for key, raw in stream.items():
        name = key.decode()
        for first_ts, partials in chunks(orjson.loads(raw)):
            _chunk_s[0] = first_ts / 1000
            for table in tables:
                table[name] = merge(table[name].value(), partials)
