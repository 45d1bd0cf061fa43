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
from web.deadlines import ClientStalled, WriteDeadlines
from web.protocol import server_message

log = logging.getLogger(__name__)
_NUMPY = orjson.OPT_SERIALIZE_NUMPY

SEND_BYTES_PER_TICK = 256 * 1024
BACKFILL = "\x00backfill"  # the buffer key of a channel's backfill (no update key has NUL)
STALLED = 4009
SHED_REPORT_S = 1.0  # sheds without a change of state are told at most this often
Send = Callable[[bytes], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


async def _no_close(code: int, reason: str) -> None:
    return None


@dataclass
class Client:
    client_id: str
    send: Send
    buffer: ClientBuffer
    close: Close = _no_close
    authenticated: bool = False
    subscriptions: set[str] = field(default_factory=set)
    seq: dict[str, int] = field(default_factory=dict)
    reported: State = State.NORMAL
    reported_shed: int = 0  # updates shed when the client was last told
    reported_at: float = 0.0
    delivered: int = 0
    connected_at: float = field(default_factory=time.time)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def next_seq(self, channel: str) -> int:
        self.seq[channel] = self.seq.get(channel, 0) + 1
        return self.seq[channel]


class Hub:
    """The clients and their subscriptions; one delivery task per client.

    What a client costs is bounded by what it reads: an update is one coalesced slot
    per (channel, key) in its buffer (the encoded bytes are shared by all clients), a
    backfill goes through the same buffer, and a client whose writes stay blocked for
    ``stall_s`` is dropped and closed (4009).
    """

    def __init__(
        self,
        total_buffer_bytes: int = 50 * 1024 * 1024,
        max_clients: int = 200,
        stall_s: float = 10.0,
    ):
        self.max_clients = max_clients
        self.per_client_bytes = total_buffer_bytes // max_clients
        self.stall_s = stall_s
        self.deadlines = WriteDeadlines(stall_s)  # its sweeper runs from Dashboard.start
        self.clients: dict[str, Client] = {}
        self.published = 0
        self.stalled = 0
        self._ids = itertools.count(1)

    def connect(self, send: Send, close: Close = _no_close) -> Client:
        if len(self.clients) >= self.max_clients:
            raise ConnectionRefusedError(f"the server takes at most {self.max_clients} clients")
        client = Client(f"c{next(self._ids)}", send, ClientBuffer(self.per_client_bytes), close)
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

    def subscribe(self, client: Client, channel: str, backfill: object) -> None:
        """Add ``channel``; its backfill goes ahead of its updates, through the buffer."""
        client.subscriptions.add(channel)
        client.buffer.offer_backfill(channel, BACKFILL, orjson.dumps(backfill, option=_NUMPY))
        client.wakeup.set()

    def unsubscribe(self, client: Client, channel: str) -> None:
        client.subscriptions.discard(channel)
        client.buffer.discard(channel)

    def wants(self, channel: str) -> bool:
        """Is any client subscribed to ``channel``? (Skip building unwanted updates.)"""
        return any(channel in c.subscriptions for c in self.clients.values())

    def publish(self, channel: str, key: str, payload: object) -> None:
        """Offer one update to every client subscribed to ``channel``."""
        self.published += 1
        raw: bytes | None = None
        for client in self.clients.values():
            if channel in client.subscriptions:
                raw = raw or orjson.dumps(payload, option=_NUMPY)
                client.buffer.offer(channel, key, raw)
                client.wakeup.set()

    async def _deliver(self, client: Client) -> None:
        """Writes what the client's buffer holds, each key at its pacer's rate."""
        try:
            await self._deliver_until_stalled(client)
        except ClientStalled as exc:
            self.stalled += 1
            self.clients.pop(client.client_id, None)  # from now on it costs nothing
            log.info("closing client %s: %s", client.client_id, exc)
            await client.close(STALLED, f"stalled: {exc}")

    async def _deliver_until_stalled(self, client: Client) -> None:
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
                if item.backfill:
                    await client.send(_wrap("backfill", item.channel, 0, None, item.payload))
                    continue
                seq = client.next_seq(item.channel)
                await client.send(_wrap("update", item.channel, seq, item.key, item.payload))
                client.delivered += 1
            shed = sum(client.buffer.shed.values())
            now = time.monotonic()
            # A change of state, or updates shed since the client was last told (a full
            # buffer sheds and can settle back within one turn, state unchanged), at
            # most once a second: the client resubscribes to what it must not miss.
            if client.buffer.state is not client.reported or (
                shed != client.reported_shed and now - client.reported_at >= SHED_REPORT_S
            ):
                client.reported = client.buffer.state
                client.reported_shed, client.reported_at = shed, now
                state = {
                    "state": client.reported.value,
                    "fill": round(client.buffer.fill, 3),
                    "shed": dict(client.buffer.shed),
                }
                await client.send(server_message("backpressure", state))
            elif shed != client.reported_shed:  # told within the second: tell it then
                due = client.reported_at + SHED_REPORT_S - now
                retry_in = due if retry_in is None else min(retry_in, due)

    def stats(self) -> dict[str, object]:
        return {
            "clients": len(self.clients),
            "published": self.published,
            "buffered_bytes": sum(
                c.buffer.size + c.buffer.backfill_size for c in self.clients.values()
            ),
            "stalled_closed": self.stalled,
            "states": {
                s.value: sum(c.buffer.state is s for c in self.clients.values()) for s in State
            },
        }


def _wrap(kind: str, channel: str, seq: int, key: str | None, payload: bytes) -> bytes:
    """A message around an already encoded payload (no second encoding)."""
    message: dict[str, object] = {"v": 1, "type": kind, "channel": channel, "seq": seq}
    if key is not None:
        message["key"] = key
    return orjson.dumps(message)[:-1] + b',"payload":' + payload + b"}"
