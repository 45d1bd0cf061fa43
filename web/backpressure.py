"""Per-client delivery: coalesce to the latest value per key, pace, and backpressure.

Each connected client has a :class:`ClientBuffer`. Updates are *coalesced*: a newer
value for the same (channel, key) replaces the waiting one, so a client that reads
slowly gets the latest state, never a backlog. Each (channel, key) goes out at most
60 times a second (:class:`KeyPacer`). The buffer is bounded in bytes; its fill
drives the digest's state machine (section A):

==========  =====================================  ==================================
state       entered                                 delivery
==========  =====================================  ==================================
normal      fill < 50 % (from pressure)            everything
pressure    fill > 80 % (from normal);             non-critical channels at a
            fill < 90 % (from critical or drop)    quarter of the rate (15 Hz a key)
critical    fill > 95 %                            core only: alerts, cameras, system
drop        full                                   alerts only; others shed
==========  =====================================  ==================================

Between thresholds the state holds (hysteresis), so a client hovering at 85 % does
not flap. Shed updates are counted per channel.

A channel's backfill (sent when a client subscribes) waits in the same buffer, ahead
of the channel's updates, but against a budget of its own (``BACKFILL_BYTES``): a
metrics backfill holds five minutes of aggregates, often more than the live budget,
and one must not push live updates out. A repeated backfill of a channel replaces the
waiting one and goes out at most once a second (``BACKFILL_HZ``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum

MAX_HZ = 60.0
BURST = 2.0
BACKFILL_BYTES = 2 * 1024 * 1024
BACKFILL_HZ = 1.0


class State(StrEnum):
    NORMAL = "normal"
    PRESSURE = "pressure"
    CRITICAL = "critical"
    DROP = "drop"


#: Channels a client in the critical state still gets (by prefix).
# analysis:<id>: a request's own events (its tokens and its end), few and each needed.
CORE_CHANNELS = ("alerts", "cameras", "camera:", "system", "analysis:")


NORMAL_UNTIL = 0.80  # a normal buffer stays normal up to this fill


def next_state(state: State, fill: float) -> State:
    """The machine's transition for a buffer ``fill`` (0..1) in ``state``."""
    if fill >= 1.0:
        return State.DROP
    if fill > 0.95:
        return State.CRITICAL if state is not State.DROP else State.DROP
    if state in (State.DROP, State.CRITICAL):
        return State.PRESSURE if fill < 0.90 else state
    if state is State.PRESSURE:
        return State.NORMAL if fill < 0.50 else State.PRESSURE
    return State.PRESSURE if fill > NORMAL_UNTIL else State.NORMAL


def settle(state: State, fill: float) -> State:
    """The state the machine rests in at ``fill``: one step may not be enough (a
    critical buffer that empties at once is below 90 % and below 50 %: normal)."""
    while (after := next_state(state, fill)) is not state:
        state = after
    return state


def is_core(channel: str) -> bool:
    return channel.startswith(CORE_CHANNELS)


@dataclass
class KeyPacer:
    """At most ``hz`` updates a second per (channel, key), ``burst`` at once.

    A token bucket per key: over any ``T`` seconds a key gets at most
    ``hz * T + burst`` updates. The limit is per key, not per connection: a page
    subscribed to a 60 Hz source and a 30 Hz camera gets both at their own rate.
    One 60 Hz budget shared by the connection was tried first: 90 updates a second
    then queued behind it, and every update arrived a frame late (``make bench-web``:
    p50 16 ms with one client; 4-7 ms per key). A fixed gap of ``1 / hz`` after each
    send, the first design, lost updates to jitter (55.7 Hz delivered of 60).
    """

    hz: float = MAX_HZ
    burst: float = BURST
    buckets: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    _pruned_at: float = 0.0

    def _tokens(self, key: tuple[str, str], now: float, hz: float) -> float:
        tokens, at = self.buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * hz)

    def allow(self, key: tuple[str, str], now: float, hz: float) -> bool:
        """May ``key`` send at ``now`` (at ``hz``)? If so, that spends a token."""
        tokens = self._tokens(key, now, hz)
        if tokens < 1:
            return False
        self.buckets[key] = (tokens - 1, now)
        if now - self._pruned_at > 1.0:
            self._prune(now)
        return True

    def wait(self, key: tuple[str, str], now: float, hz: float) -> float:
        """Seconds until ``key`` may send."""
        return max(0.0, (1 - self._tokens(key, now, hz)) / hz)

    def _prune(self, now: float) -> None:
        """Forget the buckets that are full again (a key without one is full)."""
        slowest = self.hz / 4
        self.buckets = {
            key: (tokens, at)
            for key, (tokens, at) in self.buckets.items()
            if tokens + (now - at) * slowest < self.burst
        }
        self._pruned_at = now


@dataclass(slots=True)
class Pending:
    channel: str
    key: str
    payload: bytes
    backfill: bool = False


@dataclass
class ClientBuffer:
    """What one client has yet to receive, coalesced and bounded by ``capacity`` bytes."""

    capacity: int
    pacer: KeyPacer = field(default_factory=KeyPacer)
    state: State = State.NORMAL
    size: int = 0
    items: OrderedDict[tuple[str, str], Pending] = field(default_factory=OrderedDict)
    shed: dict[str, int] = field(default_factory=dict)
    coalesced: int = 0
    backfill_size: int = 0

    @property
    def fill(self) -> float:
        return self.size / self.capacity

    def offer(self, channel: str, key: str, payload: bytes) -> bool:
        """Queue an update (replacing the same key's); False if the state shed it.

        Called once per subscribed client for every update: the common case (a
        normal buffer, the key's previous value still waiting or sent) stays short.
        """
        state = self.state
        if state is State.DROP and channel != "alerts":
            return self._shed(channel)
        if state is State.CRITICAL and not is_core(channel):
            return self._shed(channel)
        slot = (channel, key)
        old = self.items.pop(slot, None)
        if old is not None:
            self.size -= len(old.payload)
            self.coalesced += 1
        if self.size + len(payload) > self.capacity:
            if channel == "alerts":
                self._evict_for(len(payload))  # alerts push older non-alerts out
            if self.size + len(payload) > self.capacity:
                self.state = next_state(self.state, 1.0)
                return self._shed(channel)
        if old is None:
            self.items[slot] = Pending(channel, key, payload)
        else:  # the same slot, now the newest
            old.payload = payload
            self.items[slot] = old
        self.size += len(payload)
        if state is not State.NORMAL or self.size > NORMAL_UNTIL * self.capacity:
            self.state = settle(state, self.fill)  # else: normal stays normal
        return True

    def offer_backfill(self, channel: str, key: str, payload: bytes) -> bool:
        """Queue a channel's backfill (replacing a waiting one); False if over budget."""
        old = self.items.get((channel, key))
        if old is not None:
            self._remove(old)
        if self.backfill_size + len(payload) > BACKFILL_BYTES:
            return self._shed(channel)
        self.items[(channel, key)] = Pending(channel, key, payload, backfill=True)
        self.backfill_size += len(payload)
        return True

    def discard(self, channel: str) -> None:
        """Forget what waits on ``channel`` (the client unsubscribed from it)."""
        for item in list(self.items.values()):
            if item.channel == channel:
                self._remove(item)
        self.state = settle(self.state, self.fill)

    def _remove(self, item: Pending) -> None:
        del self.items[(item.channel, item.key)]
        if item.backfill:
            self.backfill_size -= len(item.payload)
        else:
            self.size -= len(item.payload)

    def _evict_for(self, needed: int) -> None:
        for item in list(self.items.values()):
            if self.size + needed <= self.capacity:
                return
            if item.channel != "alerts" and not item.backfill:
                self._remove(item)
                self._shed(item.channel)

    def _shed(self, channel: str) -> bool:
        self.shed[channel] = self.shed.get(channel, 0) + 1
        return False

    def take(self, max_bytes: int, now: float) -> tuple[list[Pending], float | None]:
        """Updates to send at ``now``, oldest first, up to ``max_bytes`` (at least one).

        Each key goes out at its pacer's rate; under pressure, keys of non-critical
        channels at a quarter of it. Also returns the seconds until what stays may go
        (``None`` if nothing stays).
        """
        out: list[Pending] = []
        budget = max_bytes
        retry: float | None = None
        for item_key, item in list(self.items.items()):
            hz = BACKFILL_HZ if item.backfill else self.pacer.hz
            if self.state is State.PRESSURE and not is_core(item.channel):
                hz /= 4
            if out and len(item.payload) > budget:
                retry = 0.0
                break
            if not self.pacer.allow(item_key, now, hz):
                wait = self.pacer.wait(item_key, now, hz)
                retry = wait if retry is None else min(retry, wait)
                continue
            self._remove(item)
            budget -= len(item.payload)
            out.append(item)
        self.state = settle(self.state, self.fill)
        return out, retry
