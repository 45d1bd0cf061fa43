"""The WebSocket clients of ``make bench-web``, in a process of their own.

``python -m bench.web_clients PORT OUT --clients N --channels a,b --rounds R``
connects one subscriber and measures it alone, connects the other N - 1, then
measures all of them without and with one deliberately slow client, ``--rounds``
times in turn. Each
subscriber speaks the protocol as the page does (hello, subscribe, pong) and records,
for every update, when it arrived and how old its producer's timestamp was then.
The slow client has a 4 KB socket receive buffer and reads one message a second, so
the server's writes to it block within a few messages.

Writes ``OUT`` (npz): per subscriber its receipt times, latencies and channels; the
phase boundaries; what the slow client saw.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SLOW_READ_EVERY_S = 1.0
SLOW_RCVBUF = 4096


def produced_ms(channel: str, payload: dict[str, Any]) -> float:
    """The producer's timestamp (epoch ms) of an update's payload."""
    if channel.startswith("camera:"):
        ns: int = payload["data"]["metadata"]["capture_ts_ns"]
        return ns / 1e6
    latest = payload["latest"]  # metrics:<source>, key "latest"
    return float(max(entry["timestamp"] for entry in latest.values()))


@dataclass
class Subscriber:
    channels: list[str]
    # Arrays, not lists: the garbage collector does not walk them (its pauses would
    # show up as latency here).
    received_s: array[float] = field(default_factory=lambda: array("d"))
    latency_ms: array[float] = field(default_factory=lambda: array("f"))
    channel: array[int] = field(default_factory=lambda: array("b"))
    states: list[str] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, url: str) -> None:
        async with connect(url, max_size=2**22) as ws:
            await _hello_and_subscribe(ws, self.channels)
            async for raw in ws:
                now = time.time()
                message = orjson.loads(raw)
                kind = message["type"]
                if kind == "update":
                    channel = message["channel"]
                    self.received_s.append(now)
                    self.latency_ms.append(now * 1000 - produced_ms(channel, message["payload"]))
                    self.channel.append(self.channels.index(channel))
                elif kind == "subscribed":
                    self.subscribed.set()
                elif kind == "ping":
                    await ws.send(orjson.dumps({"v": 1, "type": "pong"}).decode())
                elif kind == "backpressure":
                    self.states.append(message["payload"]["state"])


@dataclass
class SlowClient:
    channels: list[str]
    received: int = 0
    states: list[str] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: str | None = None
    ws: ClientConnection | None = None

    async def run(self, url: str, port: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        # max_queue=1: the library stops reading the socket after one waiting message.
        async with connect(url, sock=sock, max_queue=1, max_size=2**22) as ws:
            self.ws = ws
            await _hello_and_subscribe(ws, self.channels)
            last_pong = time.monotonic()
            try:
                while True:
                    message = orjson.loads(await ws.recv())
                    self.received += 1
                    if message["type"] == "subscribed":
                        self.subscribed.set()
                    elif message["type"] == "backpressure":
                        self.states.append(message["payload"]["state"])
                    if time.monotonic() - last_pong > 5:  # stay alive: it is slow, not dead
                        await ws.send(orjson.dumps({"v": 1, "type": "pong"}).decode())
                        last_pong = time.monotonic()
                    await asyncio.sleep(SLOW_READ_EVERY_S)  # deliberately slow
            except ConnectionClosed as exc:
                self.closed = f"{exc.rcvd.code if exc.rcvd else '?'}"

    def report(self) -> dict[str, Any]:
        return {"received": self.received, "states": self.states, "closed": self.closed}

    def abort(self) -> None:
        """Drop the connection at once (a closing handshake would wait on the backlog)."""
        if self.ws is not None:
            self.ws.transport.abort()


async def _hello_and_subscribe(ws: ClientConnection, channels: list[str]) -> None:
    await ws.send(orjson.dumps({"v": 1, "type": "hello", "payload": {}}).decode())
    subscribe = {"v": 1, "type": "subscribe", "id": "s", "payload": {"channels": channels}}
    await ws.send(orjson.dumps(subscribe).decode())


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """One client alone, then ``--rounds`` of all clients without and with a slow one.

    The rounds interleave the two conditions, so that a drift in the machine's load
    during the run falls on both alike.
    """
    url = f"ws://127.0.0.1:{args.port}/ws"
    subscribers = [Subscriber(args.channels) for _ in range(args.clients)]
    tasks = [asyncio.create_task(subscribers[0].run(url))]
    phases: list[tuple[str, float, float]] = []
    slow_reports: list[dict[str, Any]] = []
    hostile_reports: list[dict[str, Any]] = []

    async def measure(name: str) -> None:
        await asyncio.sleep(args.warmup)
        start = time.time()
        await asyncio.sleep(args.seconds)
        phases.append((name, start, time.time()))
        print(f"  clients: {name!r} measured ({len(phases)})", flush=True)

    await asyncio.wait_for(subscribers[0].subscribed.wait(), 30)
    await measure("one")
    tasks += [asyncio.create_task(s.run(url)) for s in subscribers[1:]]
    await asyncio.wait_for(asyncio.gather(*(s.subscribed.wait() for s in subscribers)), 60)
    for round_ in range(args.rounds):
        await measure("all")
        if args.hostile:
            hostile_out = args.output.with_name(f"hostile-{round_}.json")
            hostile = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "bench.web_hostile", str(args.port), str(hostile_out)),
                *("--seconds", str(args.warmup + args.seconds), "--stalled", str(args.hostile)),
                *("--channels", ",".join(args.channels)),
            )
            await measure("all_with_hostile")
            if await asyncio.wait_for(hostile.wait(), 60) != 0:
                raise RuntimeError(f"the hostile clients failed (exit {hostile.returncode})")
            hostile_reports.append(orjson.loads(hostile_out.read_bytes()))
        slow = SlowClient(args.channels)
        slow_task = asyncio.create_task(slow.run(url, args.port))
        await asyncio.wait_for(slow.subscribed.wait(), 30)
        await measure("all_with_slow")
        slow.abort()
        slow_task.cancel()
        await asyncio.gather(slow_task, return_exceptions=True)
        slow_reports.append(slow.report())
    failed = [t for t in tasks if t.done() and t.exception() is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if failed:
        raise RuntimeError(f"{len(failed)} clients failed: {failed[0].exception()!r}")
    return {
        "phases": phases,
        "subscribers": subscribers,
        "slow": slow_reports,
        "hostile": hostile_reports,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("output", type=Path)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--channels", type=lambda s: s.split(","), required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument(
        "--hostile", type=int, default=0, help="stalled clients of a hostile phase (0: none)"
    )
    args = parser.parse_args()
    out = uvloop.run(bench(args))  # the clients' own overhead is not the server's latency
    arrays: dict[str, Any] = {
        "channels": np.array(args.channels),
        "phase_names": np.array([name for name, _, _ in out["phases"]]),
        "phase_bounds": np.array([(start, end) for _, start, end in out["phases"]]),
        "slow": np.array(orjson.dumps(out["slow"])),
        "hostile": np.array(orjson.dumps(out["hostile"])),
    }
    for i, sub in enumerate(out["subscribers"]):
        arrays[f"received_{i}"] = np.array(sub.received_s)
        arrays[f"latency_{i}"] = np.array(sub.latency_ms, dtype=np.float32)
        arrays[f"channel_{i}"] = np.array(sub.channel, dtype=np.int8)
        arrays[f"states_{i}"] = np.array(sub.states or [""])
    np.savez(args.output, **arrays)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
