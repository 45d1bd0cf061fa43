"""One deadline for every write to a client, kept by one sweeping task.

A write that a client does not take within ``limit_s`` ends that client's
connection (:class:`ClientStalled`). ``asyncio.timeout`` around each write would
say the same, but it arms and disarms a loop timer per message: with a hundred
clients at 60 Hz that was a tenth of the server's CPU (py-spy, ``make bench-web``).
Here a write only notes when it began; one task looks every ``limit_s / 4`` (at
most every second) and cancels the writes that have waited too long, so a stalled
write ends between ``limit_s`` and ``limit_s`` plus that period.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable


class ClientStalled(Exception):
    """A client took no data within the server's deadline; its connection ends."""


class WriteDeadlines:
    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.period_s = min(1.0, limit_s / 4)
        self._began: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()

    async def write(self, awaitable: Awaitable[None]) -> None:
        """Await ``awaitable``; :class:`ClientStalled` if it outlives the deadline."""
        task = asyncio.current_task()
        assert task is not None, "a write runs in a task"
        self._began[task] = time.monotonic()
        try:
            await awaitable
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # cancelled by someone else: theirs to handle
            # The sweeper's cancel, delivered here: it is always delivered inside this
            # await, since the task is only marked while it is suspended in it.
            task.uncancel()
            raise ClientStalled(f"took no data for {self.limit_s:g} s") from None
        finally:
            del self._began[task]
            self._expired.discard(task)

    def sweep(self, now: float) -> int:
        """Cancel the writes begun ``limit_s`` or more before ``now``; how many."""
        expired = 0
        for task, began in self._began.items():
            if now - began >= self.limit_s and task not in self._expired:
                self._expired.add(task)
                task.cancel()
                expired += 1
        return expired

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            self.sweep(time.monotonic())
