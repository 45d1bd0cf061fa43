"""The pages' own frame timing, into ``metrics.ui`` as source ``ui`` (the digest's UX stream).

Every open page reports, per animation frame, its frame time, frames dropped and
input latency (``ux`` messages, web/PROTOCOL.md). Many pages share one source, and a
source may send at most 60 samples a second, so the server merges them into 1/60 s
slots of event time, keeping the worst of each slot (the longest frame, the most
dropped frames, the slowest input), and publishes each slot once it is 200 ms old
through the collectors' batching publisher. Then the stream worker windows them and
the analytics worker's frame-budget, jank and input-lag rules judge them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kestrel.collectors.publisher import BatchingPublisher

FIELDS = ("frame_time_ms", "dropped_frames", "input_latency_ms")
SLOT_MS = 1000 / 60
SETTLE_MS = 200
MAX_SLOTS = 1200  # 20 s of slots; the server clamps timestamps into its last 10 s


class UxMerger:
    def __init__(self, publisher: BatchingPublisher | None) -> None:
        self.publisher = publisher
        self.slots: dict[int, dict[str, float | None]] = {}
        self.received = 0
        self.refused = 0

    def add(self, timestamps: Sequence[int], data: Mapping[str, Sequence[float | None]]) -> None:
        """One page's samples, column by column (validated by the caller)."""
        for i, t in enumerate(timestamps):
            # Integer arithmetic: t // (1000 / 60) in floats puts t = 1000 in slot 59.
            index = int(t) * 60 // 1000
            if index not in self.slots and len(self.slots) >= MAX_SLOTS:
                self.refused += 1  # bounded whatever pages send
                continue
            slot = self.slots.setdefault(index, dict.fromkeys(FIELDS))
            for name in FIELDS:
                column = data.get(name)
                value = column[i] if column is not None and i < len(column) else None
                if value is not None:
                    current = slot[name]
                    slot[name] = value if current is None else max(current, value)
            self.received += 1

    def flush(self, now_ms: int) -> int:
        """Publish the slots old enough that no page will still add to them."""
        done = sorted(s for s in self.slots if (s + 1) * SLOT_MS <= now_ms - SETTLE_MS)
        for slot in done:
            row = self.slots.pop(slot)
            if self.publisher is not None:
                self.publisher.record(row, round(slot * SLOT_MS))
        if self.publisher is not None:
            self.publisher.publish_due()
        return len(done)
