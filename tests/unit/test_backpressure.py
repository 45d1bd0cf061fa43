from __future__ import annotations

import pytest

from web.backpressure import ClientBuffer, State, next_state, settle


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


@pytest.mark.parametrize(
    ("state", "fill", "expected"),
    [
        (State.CRITICAL, 0.0, State.NORMAL),  # through pressure, in one evaluation
        (State.DROP, 0.7, State.PRESSURE),  # below 90 %, not below 50 %
        (State.NORMAL, 0.97, State.CRITICAL),  # through pressure
        (State.PRESSURE, 0.6, State.PRESSURE),
    ],
)
def test_the_machine_settles_where_the_fill_puts_it(
    state: State, fill: float, expected: State
) -> None:
    assert settle(state, fill) is expected


def test_updates_coalesce_to_the_latest_per_key() -> None:
    buffer = ClientBuffer(capacity=1_000)
    assert buffer.offer("metrics:system", "cpu_percent", b"1" * 10)
    assert buffer.offer("metrics:system", "cpu_percent", b"2" * 10)
    assert buffer.offer("metrics:system", "memory_percent", b"3" * 10)
    assert buffer.coalesced == 1 and buffer.size == 20
    sent, retry_in = buffer.take(max_bytes=1_000, now=0.0)
    assert [p.payload for p in sent] == [b"2" * 10, b"3" * 10] and retry_in is None
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
    # The client reads: the buffer drains and the state comes back down.
    buffer.take(max_bytes=10_000, now=0.0)
    assert buffer.size == 0 and state(buffer) is State.NORMAL


def test_each_key_goes_out_at_most_60_times_a_second_with_a_burst_of_two() -> None:
    buffer = ClientBuffer(capacity=10_000)
    sent_at: list[float] = []
    now = 0.0
    while now < 2.0:  # a key updated every millisecond for 2 s
        buffer.offer("metrics:model:a", "latest", b"x" * 10)
        sent, _ = buffer.take(1_000, now)
        sent_at += [now] * len(sent)
        now += 0.001
    assert len(sent_at) <= 60 * 2 + 2
    assert len(sent_at) >= 60 * 2 - 2  # and it is not starved either
    for start in sent_at:  # in any window of 1 s: at most 60 + the burst
        assert sum(start <= t < start + 1 for t in sent_at) <= 62


def test_a_held_key_says_when_it_may_go_and_other_keys_do_not_wait_for_it() -> None:
    buffer = ClientBuffer(capacity=10_000)
    for _ in range(2):  # spend the burst
        buffer.offer("metrics:model:a", "latest", b"x")
        buffer.take(1_000, 0.0)
    buffer.offer("metrics:model:a", "latest", b"y")
    buffer.offer("camera:cam-1", "result", b"z")
    sent, retry_in = buffer.take(1_000, 0.0)
    assert [p.payload for p in sent] == [b"z"]
    assert retry_in is not None and abs(retry_in - 1 / 60) < 1e-9
    sent, retry_in = buffer.take(1_000, 1 / 60)
    assert [p.payload for p in sent] == [b"y"] and retry_in is None


def test_under_pressure_non_core_channels_go_out_at_a_quarter_of_the_rate() -> None:
    def delivered(channel: str) -> int:
        buffer = ClientBuffer(capacity=100, state=State.PRESSURE)
        count, now = 0, 0.0
        while now < 2.0:
            buffer.offer(channel, "k", b"x" * 85)  # keeps the buffer at 85 %: pressure
            sent, _ = buffer.take(1_000, now)
            count += len(sent)
            buffer.state = State.PRESSURE
            now += 0.001
        return count

    assert delivered("alerts") >= 118  # core: 60 a second
    assert 28 <= delivered("metrics:system") <= 32  # 15 a second, + the burst
