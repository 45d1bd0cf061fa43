"""Per-client delivery: coalesce to the latest value per key, and the backpressure machine.

Each connected client has a :class:`ClientBuffer`. Updates are *coalesced*: a newer
value for the same (channel, key) replaces the waiting one, so a client that reads
slowly gets the latest state, never a backlog. The buffer is bounded in bytes; its
fill drives the digest's state machine (section A):

==========  =====================================  ==================================
state       entered                                 delivery
==========  =====================================  ==================================
normal      fill < 50 % (from pressure)            everything
pressure    fill > 80 % (from normal);             non-critical channels at a
            fill < 90 % (from critical or drop)    quarter of the rate
critical    fill > 95 %                            core only: alerts, cameras, system
drop        full                                   alerts only; others shed
==========  =====================================  ==================================

Between thresholds the state holds (hysteresis), so a client hovering at 85 % does
not flap. Shed updates are counted per channel.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    NORMAL = "normal"
    PRESSURE = "pressure"
    CRITICAL = "critical"
    DROP = "drop"


#: Channels a client in the critical state still gets (by prefix).
CORE_CHANNELS = ("alerts", "cameras", "camera:", "system")


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
    return State.PRESSURE if fill > 0.80 else State.NORMAL


def is_core(channel: str) -> bool:
    return channel.startswith(CORE_CHANNELS)


@dataclass
class Pending:
    channel: str
    key: str
    payload: bytes


@dataclass
class ClientBuffer:
    """What one client has yet to receive, coalesced and bounded by ``capacity`` bytes."""

    capacity: int
    state: State = State.NORMAL
    size: int = 0
    items: OrderedDict[tuple[str, str], Pending] = field(default_factory=OrderedDict)
    shed: dict[str, int] = field(default_factory=dict)
    coalesced: int = 0

    @property
    def fill(self) -> float:
        return self.size / self.capacity

    def offer(self, channel: str, key: str, payload: bytes) -> bool:
        """Queue an update (replacing the same key's); False if the state shed it."""
        if self.state is State.DROP and channel != "alerts":
            return self._shed(channel)
        if self.state is State.CRITICAL and not is_core(channel):
            return self._shed(channel)
        old = self.items.pop((channel, key), None)
        if old is not None:
            self.size -= len(old.payload)
            self.coalesced += 1
        if self.size + len(payload) > self.capacity:
            if channel == "alerts":
                self._evict_for(len(payload))  # alerts push older non-alerts out
            if self.size + len(payload) > self.capacity:
                self.state = next_state(self.state, 1.0)
                return self._shed(channel)
        self.items[(channel, key)] = Pending(channel, key, payload)
        self.size += len(payload)
        self.state = next_state(self.state, self.fill)
        return True

    def _evict_for(self, needed: int) -> None:
        for item_key, item in list(self.items.items()):
            if self.size + needed <= self.capacity:
                return
            if item.channel != "alerts":
                del self.items[item_key]
                self.size -= len(item.payload)
                self._shed(item.channel)

    def _shed(self, channel: str) -> bool:
        self.shed[channel] = self.shed.get(channel, 0) + 1
        return False

    def take(self, max_bytes: int, tick: int = 0) -> list[Pending]:
        """Updates to send now, oldest first, up to ``max_bytes`` (at least one).

        Under pressure, non-critical channels go out on every fourth tick only.
        """
        out: list[Pending] = []
        budget = max_bytes
        for item_key, item in list(self.items.items()):
            if self.state is State.PRESSURE and not is_core(item.channel) and tick % 4:
                continue
            if out and len(item.payload) > budget:
                break
            del self.items[item_key]
            self.size -= len(item.payload)
            budget -= len(item.payload)
            out.append(item)
        self.state = next_state(self.state, self.fill)
        return out
