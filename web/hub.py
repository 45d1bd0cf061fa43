"""The hub: who is subscribed to what, and each client's paced, coalesced delivery.

The Kafka feed publishes every update once (:meth:`Hub.publish`); the hub offers it
to the buffer of each subscribed client (:class:`web.backpressure.ClientBuffer`).
Each client has its own sender task that wakes when its buffer has something,
writes what may go now (each key at most 60 times a second) and waits for the rest
or for news; a slow client's socket blocks only its own task, never the feed or the
other clients. Buffers are bounded in bytes so that all of them together stay under
``total_buffer_bytes`` (the digest: 50 MB).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

from web.backpressure import ClientBuffer, State
from web.protocol import server_message

log = logging.getLogger(__name__)

SEND_BYTES_PER_TICK = 256 * 1024
Send = Callable[[bytes], Awaitable[None]]


@dataclass
class Client:
    client_id: str
    send: Send
    buffer: ClientBuffer
    subscriptions: set[str] = field(default_factory=set)
    seq: dict[str, int] = field(default_factory=dict)
    reported: State = State.NORMAL
    delivered: int = 0
    connected_at: float = field(default_factory=time.time)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def next_seq(self, channel: str) -> int:
        self.seq[channel] = self.seq.get(channel, 0) + 1
        return self.seq[channel]


class Hub:
    def __init__(self, total_buffer_bytes: int = 50 * 1024 * 1024, max_clients: int = 200):
        self.max_clients = max_clients
        self.per_client_bytes = total_buffer_bytes // max_clients
        self.clients: dict[str, Client] = {}
        self.published = 0
        self._ids = itertools.count(1)

    def connect(self, send: Send) -> Client:
        if len(self.clients) >= self.max_clients:
            raise ConnectionRefusedError(f"the server takes at most {self.max_clients} clients")
        client = Client(f"c{next(self._ids)}", send, ClientBuffer(self.per_client_bytes))
        self.clients[client.client_id] = client
        client.task = asyncio.create_task(self._deliver(client), name=f"send-{client.client_id}")
        return client

    async def disconnect(self, client: Client) -> None:
        self.clients.pop(client.client_id, None)
        if client.task is not None:
            client.task.cancel()
            # Its socket is gone either way: how the sender ended does not matter.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await client.task

    def wants(self, channel: str) -> bool:
        """Is any client subscribed to ``channel``? (Skip building unwanted updates.)"""
        return any(channel in c.subscriptions for c in self.clients.values())

    def publish(self, channel: str, key: str, payload: object) -> None:
        """Offer one update to every client subscribed to ``channel``."""
        self.published += 1
        raw: bytes | None = None
        for client in self.clients.values():
            if channel in client.subscriptions:
                raw = raw or orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
                client.buffer.offer(channel, key, raw)
                client.wakeup.set()

    async def _deliver(self, client: Client) -> None:
        """Writes what the client's buffer holds, each key at its pacer's rate."""
        retry_in: float | None = None
        while True:
            if retry_in is None:
                await client.wakeup.wait()
            else:  # until news, or until a held key may go: it never delays another
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(retry_in):
                        await client.wakeup.wait()
            client.wakeup.clear()
            ready, retry_in = client.buffer.take(SEND_BYTES_PER_TICK, time.monotonic())
            for item in ready:
                seq = client.next_seq(item.channel)
                await client.send(_update(item.channel, seq, item.key, item.payload))
                client.delivered += 1
            if client.buffer.state is not client.reported:
                client.reported = client.buffer.state
                state = {
                    "state": client.reported.value,
                    "fill": round(client.buffer.fill, 3),
                    "shed": dict(client.buffer.shed),
                }
                await client.send(server_message("backpressure", state))

    def stats(self) -> dict[str, object]:
        return {
            "clients": len(self.clients),
            "published": self.published,
            "buffered_bytes": sum(c.buffer.size for c in self.clients.values()),
            "states": {
                s.value: sum(c.buffer.state is s for c in self.clients.values()) for s in State
            },
        }


def _update(channel: str, seq: int, key: str, payload: bytes) -> bytes:
    """An update message around an already encoded payload (no second encoding)."""
    head = orjson.dumps({"v": 1, "type": "update", "channel": channel, "seq": seq, "key": key})
    return head[:-1] + b',"payload":' + payload + b"}"
