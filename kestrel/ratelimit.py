"""The digest's 60 Hz budget per high-frequency source, on event time."""

from __future__ import annotations

from collections.abc import Sequence

REFUSED_KEYS = 100  # sources whose refusals are counted by name; the rest as OTHER
OTHER = "(other sources)"


class SourceRateLimiter:
    """At most ``max_hz`` samples per source in any whole second of event time.

    A message that would take its source over budget is refused whole (it goes to
    the dead-letter topic), so nothing of it is counted and a replay of the dead
    letter cannot count anything twice. The decision depends only on the samples'
    timestamps and the counts so far, which the stages persist with their state
    (:meth:`counts`, :meth:`restore`): a replay after a restart decides the same.
    """

    def __init__(self, max_hz: float, horizon_s: int = 30) -> None:
        self.max_per_second = int(max_hz)
        self.horizon_s = horizon_s
        self._counts: dict[str, dict[int, int]] = {}
        # Keyed by names producers choose: bounded (the windows' source cap bounds
        # _counts, whose sources are forgotten with their windows).
        self.refused: dict[str, int] = {}

    def admit(self, source: str, timestamps_ms: Sequence[int]) -> bool:
        """Count the message's samples against their seconds, if they all fit."""
        seconds: dict[int, int] = {}
        for ts in timestamps_ms:
            second = ts // 1000
            seconds[second] = seconds.get(second, 0) + 1
        if not seconds:
            return True
        counts = self._counts.get(source, {})
        if any(counts.get(s, 0) + n > self.max_per_second for s, n in seconds.items()):
            name = source if source in self.refused or len(self.refused) < REFUSED_KEYS else OTHER
            self.refused[name] = self.refused.get(name, 0) + len(timestamps_ms)
            return False
        counts = self._counts.setdefault(source, counts)
        for second, n in seconds.items():
            counts[second] = counts.get(second, 0) + n
        newest = max(counts)
        if len(counts) > self.horizon_s:
            for second in [s for s in counts if s < newest - self.horizon_s]:
                del counts[second]
        return True

    def counts(self, source: str) -> dict[int, int]:
        """The source's samples per second over the horizon (for the changelog)."""
        return dict(self._counts.get(source, {}))

    def restore(self, source: str, counts: dict[int, int]) -> None:
        self._counts[source] = {int(s): int(n) for s, n in counts.items()}

    def forget(self, source: str) -> None:
        self._counts.pop(source, None)
