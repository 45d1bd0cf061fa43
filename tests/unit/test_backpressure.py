from __future__ import annotations

import pytest

from web.backpressure import ClientBuffer, State, next_state


@pytest.mark.parametrize(
    ("state", "fill", "expected"),
    [
        (State.NORMAL, 0.80, State.NORMAL),
        (State.NORMAL, 0.81, State.PRESSURE),
        (State.PRESSURE, 0.60, State.PRESSURE),  # hysteresis: stays until < 50 %
        (State.PRESSURE, 0.49, State.NORMAL),
        (State.PRESSURE, 0.96, State.CRITICAL),
        (State.CRITICAL, 0.92, State.CRITICAL),  # holds until < 90 %
        (State.CRITICAL, 0.89, State.PRESSURE),
        (State.CRITICAL, 1.0, State.DROP),
        (State.DROP, 0.97, State.DROP),
        (State.DROP, 0.89, State.PRESSURE),
        (State.NORMAL, 1.0, State.DROP),
    ],
)
def test_the_digest_s_state_machine(state: State, fill: float, expected: State) -> None:
    assert next_state(state, fill) is expected


def state(buffer: ClientBuffer) -> State:
    """The buffer's state now (a call, so the type checker does not narrow it)."""
    return buffer.state


def test_updates_coalesce_to_the_latest_per_key() -> None:
    buffer = ClientBuffer(capacity=1_000)
    assert buffer.offer("metrics:system", "cpu_percent", b"1" * 10)
    assert buffer.offer("metrics:system", "cpu_percent", b"2" * 10)
    assert buffer.offer("metrics:system", "memory_percent", b"3" * 10)
    assert buffer.coalesced == 1 and buffer.size == 20
    sent = buffer.take(max_bytes=1_000)
    assert [p.payload for p in sent] == [b"2" * 10, b"3" * 10]
    assert buffer.size == 0 and buffer.state is State.NORMAL


def test_a_slow_client_climbs_the_states_and_sheds_with_memory_bounded() -> None:
    buffer = ClientBuffer(capacity=1_000)
    for i in range(9):  # 90 % full
        buffer.offer("metrics:model:a", f"f{i}", b"x" * 100)
    assert buffer.state is State.PRESSURE
    buffer.offer("cameras", "cam-1", b"y" * 60)  # 96 %
    assert state(buffer) is State.CRITICAL
    assert not buffer.offer("metrics:model:a", "new", b"z" * 10)  # not core: shed
    assert buffer.offer("camera:cam-1", "frame", b"w" * 30)  # core: still queued
    assert not buffer.offer("camera:cam-1", "big", b"v" * 100)  # no room: shed, now drop
    assert state(buffer) is State.DROP
    assert buffer.offer("alerts", "a1", b"!" * 200)  # alerts push older updates out
    assert buffer.size <= buffer.capacity
    assert buffer.shed["metrics:model:a"] >= 1
    # The client reads: the buffer drains and the state steps back down.
    buffer.take(max_bytes=10_000)
    assert buffer.size == 0 and state(buffer) is State.PRESSURE
    buffer.offer("metrics:model:a", "f0", b"x" * 10)
    buffer.take(max_bytes=10_000, tick=4)
    assert state(buffer) is State.NORMAL


def test_under_pressure_non_core_channels_go_out_one_tick_in_four() -> None:
    buffer = ClientBuffer(capacity=100, state=State.PRESSURE)
    buffer.offer("metrics:system", "cpu", b"x" * 60)
    buffer.offer("alerts", "a", b"y" * 10)
    assert [p.channel for p in buffer.take(1_000, tick=1)] == ["alerts"]
    assert [p.channel for p in buffer.take(1_000, tick=4)] == ["metrics:system"]
