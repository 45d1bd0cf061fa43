"""The hostile clients of ``make bench-web``, in a process of their own.

``python -m bench.web_hostile PORT OUT --seconds S --stalled N --channels a,b`` runs,
for ``S`` seconds, everything the server must survive without the well-behaved
clients noticing:

* **stalled**: ``N`` clients (4 KB receive buffers) that subscribe and never read
  again; each one the server closes is replaced at once;
* **subscribe flood**: one client sending 1000 subscribe/unsubscribe messages a
  second (reading what comes back), reconnecting whenever it is closed;
* **bad frames**: one client sending invalid JSON, unknown types and a frame over
  the size limit, ten a second, reconnecting whenever it is closed;
* **reconnect storm**: 20 connections a second that say hello, subscribe, and leave.

Writes ``OUT`` (JSON): what each kind of client did and how the server answered it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import time
from collections import Counter
from pathlib import Path

import orjson
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

FLOOD_PER_S = 1000
BAD_PER_S = 10
STORM_PER_S = 20
LIFETIME_S = 15.0  # a stalled client comes back after this (the server's deadline: 10 s)


def _message(kind: str, **payload: object) -> str:
    return orjson.dumps({"v": 1, "type": kind, "payload": payload}).decode()


class Hostile:
    def __init__(self, url: str, port: int, channels: list[str], until: float) -> None:
        self.url, self.port, self.channels, self.until = url, port, channels, until
        self.counts: Counter[str] = Counter()

    def running(self) -> bool:
        return time.monotonic() < self.until

    def closed(self, kind: str, exc: BaseException) -> None:
        code = getattr(getattr(exc, "rcvd", None), "code", None)
        if isinstance(exc, InvalidStatus):
            code = exc.response.status_code
        self.counts[f"{kind}_closed_{code or type(exc).__name__}"] += 1

    async def _open(self, **kwargs: object) -> ClientConnection:
        ws = await connect(self.url, max_size=2**22, **kwargs)  # type: ignore[arg-type]
        await ws.send(_message("hello"))
        return ws

    async def stalled(self) -> None:
        """Subscribe, then never read; when the server gives up, come back."""
        while self.running():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
                ws = await self._open(sock=sock, max_queue=1)
                await ws.send(_message("subscribe", channels=self.channels))
                self.counts["stalled_connected"] += 1
                # Never read. With reading paused this side may not notice the server's
                # close (its count is in the server's status, stalled_closed): come
                # back after a while either way, as a stuck page's reload would.
                lifetime = max(0.1, min(LIFETIME_S, self.until - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ws.wait_closed(), lifetime)
                ws.transport.abort()
            except (OSError, ConnectionClosed, InvalidStatus) as exc:
                self.closed("stalled", exc)
                await asyncio.sleep(0.5)

    async def _drain(self, ws: ClientConnection, kind: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                message = orjson.loads(raw)
                if message["type"] == "error":
                    self.counts[f"{kind}_error_{message['payload']['code']}"] += 1

    async def flood(self) -> None:
        """1000 subscribe/unsubscribe messages a second on one connection."""
        subscribe = _message("subscribe", channels=self.channels)
        unsubscribe = _message("unsubscribe", channels=self.channels)
        while self.running():
            reader: asyncio.Task[None] | None = None
            try:
                ws = await self._open()
                reader = asyncio.create_task(self._drain(ws, "flood"))
                sent = 0
                started = time.monotonic()
                while self.running():
                    await ws.send(subscribe if sent % 2 == 0 else unsubscribe)
                    sent += 1
                    self.counts["flood_sent"] += 1
                    ahead = sent / FLOOD_PER_S - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            except (OSError, ConnectionClosed, InvalidStatus) as exc:
                self.closed("flood", exc)
            finally:
                if reader is not None:
                    reader.cancel()

    async def bad_frames(self) -> None:
        """Invalid JSON, unknown types, and a frame over the server's size limit."""
        frames = ["{not json", _message("launch"), "x" * 100_000]
        while self.running():
            reader: asyncio.Task[None] | None = None
            try:
                ws = await self._open()
                reader = asyncio.create_task(self._drain(ws, "bad"))
                for i in range(10**9):
                    if not self.running():
                        break
                    await ws.send(frames[i % len(frames)])
                    self.counts["bad_sent"] += 1
                    await asyncio.sleep(1 / BAD_PER_S)
            except (OSError, ConnectionClosed, InvalidStatus) as exc:
                self.closed("bad", exc)
            finally:
                if reader is not None:
                    reader.cancel()

    async def storm(self) -> None:
        """Connections that say hello, subscribe and leave, 20 a second."""

        async def visit() -> None:
            try:
                ws = await self._open()
                await ws.send(_message("subscribe", channels=self.channels))
                await asyncio.wait_for(ws.recv(), 5)
                await ws.close()
                self.counts["storm_visits"] += 1
            except (OSError, ConnectionClosed, InvalidStatus, TimeoutError) as exc:
                self.closed("storm", exc)

        visits: set[asyncio.Task[None]] = set()
        while self.running():
            task = asyncio.create_task(visit())
            visits.add(task)
            task.add_done_callback(visits.discard)
            await asyncio.sleep(1 / STORM_PER_S)
        await asyncio.gather(*visits, return_exceptions=True)


async def run(args: argparse.Namespace) -> dict[str, int]:
    hostile = Hostile(
        f"ws://127.0.0.1:{args.port}/ws",
        args.port,
        args.channels,
        time.monotonic() + args.seconds,
    )
    actors = [hostile.stalled() for _ in range(args.stalled)]
    actors += [hostile.flood(), hostile.bad_frames(), hostile.storm()]
    await asyncio.gather(*actors)
    return dict(hostile.counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("output", type=Path)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--stalled", type=int, default=80)
    parser.add_argument("--channels", type=lambda s: s.split(","), required=True)
    args = parser.parse_args()
    started, cpu_started = time.monotonic(), time.process_time()
    report: dict[str, float] = {**uvloop.run(run(args))}
    # Its own CPU (% of one core): on one machine, what the crowd takes from everyone else.
    report["cpu_percent"] = 100 * (time.process_time() - cpu_started) / (time.monotonic() - started)
    args.output.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
