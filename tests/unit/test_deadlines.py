"""The write deadline's sweeper: in the event loop, no sockets, its clock given."""

from __future__ import annotations

import asyncio
import time

import pytest

from web.deadlines import ClientStalled, WriteDeadlines

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def _writer(deadlines: WriteDeadlines, taken: asyncio.Future[None]) -> str:
    """Writes once, then proves the task is still usable (not left cancelled)."""
    try:
        await deadlines.write(taken)
        outcome = "written"
    except ClientStalled as exc:
        outcome = f"stalled: {exc}"
    await asyncio.sleep(0)  # a stray cancel would land here
    task = asyncio.current_task()
    assert task is not None
    return f"{outcome}; cancelling={task.cancelling()}"


async def _suspended(deadlines: WriteDeadlines, count: int) -> None:
    """One loop turn: a new task runs up to its write and waits there."""
    await asyncio.sleep(0)
    assert len(deadlines._began) == count


async def test_a_write_not_taken_within_the_deadline_ends_as_stalled_and_only_it() -> None:
    deadlines = WriteDeadlines(limit_s=2.0)
    stuck: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    young: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    old_task = asyncio.create_task(_writer(deadlines, stuck))
    await _suspended(deadlines, 1)
    began = time.monotonic()
    young_task = asyncio.create_task(_writer(deadlines, young))
    await _suspended(deadlines, 2)
    assert deadlines.sweep(began + 1.0) == 0  # both within their deadline
    deadlines._began[young_task] = began + 1.5  # began later than the stuck one
    assert deadlines.sweep(began + 2.5) == 1
    assert await old_task == "stalled: took no data for 2 s; cancelling=0"
    young.set_result(None)
    assert await young_task == "written; cancelling=0"
    assert not deadlines._began and not deadlines._expired


async def test_a_write_taken_just_as_the_sweeper_expires_it_still_ends_cleanly() -> None:
    """The data went out in the same loop turn as the sweep: the task resumes with the
    sweeper's cancel inside the write, never later at some other await."""
    deadlines = WriteDeadlines(limit_s=1.0)
    taken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_writer(deadlines, taken))
    await _suspended(deadlines, 1)
    taken.set_result(None)  # its wakeup is scheduled, not yet run
    assert deadlines.sweep(time.monotonic() + 5.0) == 1
    assert await task == "stalled: took no data for 1 s; cancelling=0"


async def test_a_cancel_from_elsewhere_is_not_mistaken_for_a_stall() -> None:
    deadlines = WriteDeadlines(limit_s=1.0)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(deadlines.write(never))
    await _suspended(deadlines, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines._began


async def test_the_sweeper_task_expires_a_stuck_write_on_the_real_clock() -> None:
    deadlines = WriteDeadlines(limit_s=0.2)
    sweeper = asyncio.create_task(deadlines.run())
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    try:
        began = time.monotonic()
        with pytest.raises(ClientStalled):
            await deadlines.write(never)
        waited = time.monotonic() - began
        assert waited >= 0.2  # never before the deadline
    finally:
        sweeper.cancel()
