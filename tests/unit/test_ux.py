from __future__ import annotations

from typing import Any

from web.ux import SLOT_MS, UxMerger


class Recorder:
    """Stands in for the batching publisher (its Kafka side is tested elsewhere)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, Any]]] = []

    def record(self, data: dict[str, Any], timestamp_ms: int | None = None) -> bool:
        self.rows.append((timestamp_ms or 0, dict(data)))
        return True

    def publish_due(self) -> None:
        pass


def test_pages_merge_into_one_sample_per_sixtieth_of_a_second_keeping_the_worst() -> None:
    recorder = Recorder()
    merger = UxMerger(recorder)  # type: ignore[arg-type]
    merger.add([1000, 1017], {"frame_time_ms": [16.0, 40.0], "dropped_frames": [0, 2]})
    merger.add([1001], {"frame_time_ms": [20.0], "input_latency_ms": [35.0]})  # another page
    assert merger.flush(now_ms=1100) == 0  # too fresh: a page may still report
    assert merger.flush(now_ms=1300) == 2
    (t1, first), (t2, second) = recorder.rows
    assert t1 == round(60 * SLOT_MS) and first == {
        "frame_time_ms": 20.0,
        "dropped_frames": 0,
        "input_latency_ms": 35.0,
    }
    assert t2 == round(61 * SLOT_MS) and second["frame_time_ms"] == 40.0
    assert second["input_latency_ms"] is None
    assert merger.received == 3
