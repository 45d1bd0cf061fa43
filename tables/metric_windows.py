"""1-second tumbling windows of every collector field, emitted when they close.

State: a windowed Faust table keyed by ``"<source>|<field>"`` whose value is the
window's ``[count, sum]``; its changelog lets a restarted worker carry on. Event time
is the envelope's ``timestamp``. Faust closes a window once the wall clock passes its
end plus ``KESTREL_WINDOW_EXPIRES_S``, and this module then publishes the final
:class:`~kestrel.schemas.WindowAggregate` to the compacted ``metrics.aggregates``
topic, keyed so that compaction keeps exactly one record per window.
"""

from __future__ import annotations

import logging
from typing import Any, Final, cast

from faust.tables.wrappers import WindowWrapper

from faust_app import app, settings
from kestrel.schemas import WindowAggregate
from kestrel.topics import METRICS_AGGREGATES, faust_topic

log = logging.getLogger(__name__)

WINDOW_S: Final = 1.0
WINDOW_NAME: Final = "1s"

Accumulator = list[float]  # [count, sum]; a list because the changelog is JSON


def empty() -> Accumulator:
    return [0, 0.0]


def accumulate(acc: Accumulator, value: float) -> Accumulator:
    """Add one sample to a window's accumulator (Faust applies it per window)."""
    return [acc[0] + 1, acc[1] + value]


def field_key(source: str, field: str) -> str:
    """Table key of one field of one source; ``|`` cannot occur in a source name."""
    return f"{source}|{field}"


def to_aggregate(key: str, window: tuple[float, float], acc: Accumulator) -> WindowAggregate:
    """The published form of a closed window.

    Faust reports a window as ``(start, start + size - 0.1)``; the aggregate states
    the real half-open range ``[start, start + size)`` in epoch milliseconds.
    """
    source, _, field = key.partition("|")
    start_ms = round(window[0] * 1000)
    count, total = int(acc[0]), float(acc[1])
    return WindowAggregate(
        source=source,
        field=field,
        window=WINDOW_NAME,
        window_start_ms=start_ms,
        window_end_ms=start_ms + round(WINDOW_S * 1000),
        count=count,
        sum=total,
        mean=total / count,
    )


aggregates_topic = faust_topic(app, settings, METRICS_AGGREGATES)


async def publish_closed_window(key: Any, value: Accumulator) -> None:
    """on_window_close: send the final value of one window downstream, once."""
    field, window = key
    aggregate = to_aggregate(field, (window[0], window[1]), value)
    await aggregates_topic.send(
        key=aggregate.key.encode(), value=aggregate.model_dump_json().encode()
    )


# The concrete wrapper: its `relative_to` is missing from Faust's WindowWrapperT.
metric_windows = cast(
    WindowWrapper,
    app.Table(
        "metric-windows-1s",
        default=empty,
        partitions=settings.topic_partitions,
        on_window_close=publish_closed_window,
    ).tumbling(WINDOW_S, expires=settings.window_expires_s),
)


def add_sample(source: str, field: str, timestamp_ms: int, value: float) -> None:
    """Add one sample at its event time to its field's 1-second window."""
    window = metric_windows.relative_to(timestamp_ms / 1000.0)
    window[field_key(source, field)].apply(accumulate, value)
