"""``make bench-requests``: on-demand requests in four lanes beside live cameras.

One run, the project's broker, an inference worker, a stream worker (tracking) and the
dashboard server (``python -m web``, in its own process), all as users run them:

1. **cameras alone**: ``--cameras`` live cameras at ``--fps`` each (a load this
   machine keeps up with); their results per second and latency, read by a
   downstream consumer of ``camera.results``.
2. **cameras + requests**: the same cameras, and at the same time a mixed load of
   requests submitted through ``POST /api/v1/stream/analyze`` and followed over the
   WebSocket (``analysis:<id>``): urgent, high and normal ones at steady rates, a
   steady trickle of low ones, and a flood of ``--low-flood`` low requests at once at
   the start. Every ``--cancel-every``-th low request is cancelled (``DELETE``) right
   after it is accepted. Every ``--clip-every-s`` a clip (``--clip-s`` seconds of a
   camera's street as MPEG-4, analysed at the worker's 4 frames a second) goes in
   the normal lane; its figures are apart from the images'.

Per lane: time from the submit to the first token and to ``complete`` (as the client
sees them), the worker's own first-token time (from the start of work) and the gap
between tokens, deadline misses; the time from a cancel to its ``cancelled`` event;
the WebSocket latency from each event's production (its ``ts_ms``) to the client; the
cameras' results per second with and without the requests; the inference worker's
memory through the requests phase (sampled each second: its growth over the first and
the second half tells a warm-up from a leak). Prints a table and writes
``bench/results/requests.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import orjson
import psutil
from websockets.asyncio.client import ClientConnection, connect

from bench.camera import Seen, collect, frames_for, phase
from bench.telemetry import REPO, PeakRss, broker_settings, free_port, start_broker, start_process
from bench.telemetry import stop as stop_process
from bench.web import wait_healthy
from kestrel.camera.registry import register
from kestrel.camera.synthetic import SyntheticScene
from kestrel.ondemand.lanes import LANE_ORDER
from kestrel.producer import KestrelProducer
from kestrel.schemas.camera import CameraConfig
from kestrel.settings import child_environment, load_settings

RESULTS = REPO / "bench" / "results"
TARGET_COMPLETE_MS = {"urgent": 2_000, "high": 5_000, "normal": 10_000}
FINAL = ("complete", "cancelled", "error")


@dataclass
class Tracked:
    lane: str
    submitted: float  # epoch seconds, when the client started the POST
    media: str = "image"
    request_id: str = ""
    cancel_sent: float | None = None
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (receipt, event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def first(self, kind: str) -> tuple[float, dict[str, Any]] | None:
        return next(((t, e) for t, e in self.events if e["type"] == kind), None)

    @property
    def outcome(self) -> dict[str, Any] | None:
        final = [e for _, e in self.events if e["type"] in FINAL]
        return final[-1] if final else None


class Load:
    """Submits the requests and follows them over one WebSocket."""

    def __init__(self, base: str, ws_url: str, cancel_every: int) -> None:
        self.base, self.ws_url, self.cancel_every = base, ws_url, cancel_every
        self.requests: dict[str, Tracked] = {}
        self.tracked: list[Tracked] = []
        self.ws_latency_ms: list[float] = []
        self.refused: dict[str, int] = {}
        self.lows = 0
        self.resubscribed = 0  # requests whose end the client missed and read back
        self.missed_server_states: dict[str, int] = {}  # the server's view of those
        self.backpressure: dict[str, int] = {}
        self.shed_seen: dict[str, int] = {}
        self.errors: dict[str, int] = {}  # error messages the server sent, by code
        self._sent_at = 0.0
        self.reread_after_shed = 0  # requests read anew after the server said it shed

    async def run(
        self, media: dict[str, bytes], schedule: list[tuple[float, str]], drain_s: float
    ) -> None:
        async with httpx.AsyncClient(timeout=30) as http, connect(self.ws_url) as ws:
            await ws.send(orjson.dumps({"type": "hello", "payload": {}}).decode())
            reader = asyncio.create_task(self._read(ws))
            started = time.monotonic()
            submits = []
            for at, lane in schedule:
                delay = started + at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # the load's own clock
                kind = "clip" if lane == "clip" else "image"
                lane = "normal" if lane == "clip" else lane
                submit = self._submit(http, ws, media[kind], lane, kind)
                submits.append(asyncio.create_task(submit))
            await asyncio.gather(*submits)
            await self._drain(ws, drain_s)
            # A client that missed a request's end (its updates shed under backpressure)
            # subscribes anew: the backfill holds every event so far.
            missed = [t for t in self.tracked if t.request_id and not t.done.is_set()]
            for tracked in missed:
                self.resubscribed += 1
                status = await http.get(f"{self.base}/api/v1/stream/status/{tracked.request_id}")
                state = status.json().get("state", str(status.status_code))
                self.missed_server_states[state] = self.missed_server_states.get(state, 0) + 1
                for kind in ("unsubscribe", "subscribe"):
                    message = {
                        "type": kind,
                        "payload": {"channels": [f"analysis:{tracked.request_id}"]},
                    }
                    await self._send(ws, message)
            await self._drain(ws, 15.0)
            reader.cancel()

    async def _drain(self, ws: ClientConnection, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await asyncio.gather(*(t.done.wait() for t in self.tracked if t.request_id))
        except TimeoutError:
            pass  # counted below as not finished

    async def _submit(
        self, http: httpx.AsyncClient, ws: ClientConnection, data: bytes, lane: str, media: str
    ) -> None:
        tracked = Tracked(lane, time.time(), media)
        self.tracked.append(tracked)
        name, kind = ("street.mp4", "video/mp4") if media == "clip" else ("frame.jpg", "image/jpeg")
        answer = await http.post(
            f"{self.base}/api/v1/stream/analyze",
            files={"file": (name, data, kind)},
            data={"priority": lane},
        )
        if answer.status_code != 202:
            code = answer.json().get("error", str(answer.status_code))
            self.refused[code] = self.refused.get(code, 0) + 1
            return
        tracked.request_id = answer.json()["id"]
        self.requests[tracked.request_id] = tracked
        channel = f"analysis:{tracked.request_id}"
        await self._send(ws, {"type": "subscribe", "payload": {"channels": [channel]}})
        if lane == "low":
            self.lows += 1
            if self.cancel_every and self.lows % self.cancel_every == 0:
                tracked.cancel_sent = time.time()
                await http.delete(f"{self.base}/api/v1/stream/{tracked.request_id}")

    async def _send(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        """One client message, within PROTOCOL.md's 50 a second (at most 40 here): past
        the limit the server refuses a message and reads no more for the second."""
        wait = self._sent_at + 1 / 40 - time.monotonic()
        self._sent_at = time.monotonic() + max(wait, 0.0)
        if wait > 0:
            await asyncio.sleep(wait)  # the client's own pace
        await ws.send(orjson.dumps(message).decode())

    async def _read_shed_anew(self, ws: ClientConnection, shed: dict[str, int]) -> None:
        """As the page does: a request some of whose events were shed is read anew."""
        for channel, count in shed.items():
            tracked = self.requests.get(channel.removeprefix("analysis:"))
            if tracked is None or tracked.done.is_set() or count <= self.shed_seen.get(channel, 0):
                continue
            self.shed_seen[channel] = count
            self.reread_after_shed += 1
            for kind in ("unsubscribe", "subscribe"):
                message = {"type": kind, "payload": {"channels": [channel]}}
                await self._send(ws, message)

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            received = time.time()
            message = orjson.loads(raw)
            kind, channel = message.get("type"), message.get("channel") or ""
            if kind == "error":
                code = message["payload"]["code"]
                self.errors[code] = self.errors.get(code, 0) + 1
            if kind == "backpressure":
                state = message["payload"]["state"]
                self.backpressure[state] = self.backpressure.get(state, 0) + 1
                await self._read_shed_anew(ws, message["payload"]["shed"])
            if not channel.startswith("analysis:"):
                if kind == "ping":
                    await ws.send(orjson.dumps({"type": "pong", "payload": {}}).decode())
                continue
            tracked = self.requests.get(channel.removeprefix("analysis:"))
            if tracked is None:
                continue
            if kind == "backfill":
                events = message["payload"]["events"]
            else:  # produced after the subscribe: its delivery time is the WebSocket's
                events = [message["payload"]]
                self.ws_latency_ms.append(received * 1000 - message["payload"]["ts_ms"])
            seen = {e["seq"] for _, e in tracked.events}
            for event in events:
                if event["seq"] not in seen:
                    tracked.events.append((received, event))
                    if event["type"] in FINAL and (
                        event["type"] != "error" or not event["payload"]["recoverable"]
                    ):
                        tracked.done.set()


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def lane_figures(tracked: list[Tracked], lane: str, media: str = "image") -> dict[str, Any]:
    mine = [t for t in tracked if t.lane == lane and t.media == media and t.request_id]
    outcomes = [t.outcome for t in mine]
    completed = [t for t, o in zip(mine, outcomes, strict=True) if o and o["type"] == "complete"]
    to_first, to_complete, first_token, gaps = [], [], [], []
    for t in completed:
        token = t.first("token")
        if token is not None:
            to_first.append((token[0] - t.submitted) * 1000)
        done = t.first("complete")
        assert done is not None
        to_complete.append((done[0] - t.submitted) * 1000)
        summary = done[1]["payload"]["summary"]
        if summary["first_token_ms"] is not None:
            first_token.append(summary["first_token_ms"])
        # Between consecutive tokens, as the worker produced them (the first token's
        # own wait, from the start of work, is worker_first_token_ms).
        stamps = [e["ts_ms"] for _, e in t.events if e["type"] == "token"]
        gaps += [b - a for a, b in itertools.pairwise(stamps)]
    codes = [o["payload"]["code"] for o in outcomes if o and o["type"] == "error"]
    target = TARGET_COMPLETE_MS.get(lane)
    return {
        "submitted": len(mine),
        "completed": len(completed),
        "cancelled": sum(1 for o in outcomes if o and o["type"] == "cancelled"),
        "deadline_missed": codes.count("deadline_exceeded"),
        "other_errors": len(codes) - codes.count("deadline_exceeded"),
        "unfinished": sum(1 for o in outcomes if o is None),
        "to_first_token_ms": percentiles(to_first),
        "to_complete_ms": percentiles(to_complete),
        "worker_first_token_ms": percentiles(first_token),
        "mean_token_gap_ms": float(np.mean(gaps)) if gaps else None,
        "target_complete_ms": target,
        "over_target": sum(1 for ms in to_complete if target is not None and ms > target),
    }


def schedule_of(args: argparse.Namespace) -> list[tuple[float, str]]:
    """(seconds from the start, lane) of every submit, in time order."""
    plan = [(0.0, "low")] * args.low_flood
    for lane, every in (
        ("clip", args.clip_every_s),
        ("urgent", args.urgent_every_s),
        ("high", args.high_every_s),
        ("normal", args.normal_every_s),
        ("low", 1 / args.low_per_s if args.low_per_s else 0),
    ):
        if every:
            plan += [(t, lane) for t in np.arange(every / 2, args.seconds, every)]
    return sorted(plan)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--fps", type=float, default=5.0, help="per camera")
    parser.add_argument("--seconds", type=float, default=40.0, help="each phase's length")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds not measured")
    parser.add_argument("--urgent-every-s", type=float, default=2.0)
    parser.add_argument("--high-every-s", type=float, default=1.0)
    parser.add_argument("--normal-every-s", type=float, default=1.0)
    parser.add_argument("--low-per-s", type=float, default=2.0)
    parser.add_argument("--low-flood", type=int, default=60, help="low requests at once")
    parser.add_argument("--cancel-every", type=int, default=5, help="every n-th low request")
    parser.add_argument("--clip-every-s", type=float, default=10.0, help="0: no clips")
    parser.add_argument("--clip-s", type=float, default=5.0, help="each clip's length")
    parser.add_argument("--output", type=Path, default=RESULTS / "requests.json")
    args = parser.parse_args()

    defaults = load_settings()
    frames = frames_for(args.cameras, 50)
    image = frames[0][10]  # a 640x480 street scene, as the cameras send
    workdir = Path(tempfile.mkdtemp(prefix="kestrel-bench-requests-"))
    clip = street_clip(args.clip_s, workdir)
    broker = start_broker(workdir, defaults)
    procs = []
    try:
        port = free_port()
        settings = broker_settings(broker, workdir, "benchreq", web_port=port)
        producer = KestrelProducer(settings)
        for camera in range(args.cameras):
            config = CameraConfig(camera_id=f"bench-{camera}", source="synthetic:0", fps=args.fps)
            register(producer, settings, config)
        producer.flush()
        env = child_environment(settings, PYTHONUNBUFFERED="1")
        for app, log in (("faust_app:inference", "inference.log"), ("faust_app", "stream.log")):
            argv = [sys.executable, "-m", "faust", "-A", app, "worker", "-l", "info"]
            procs.append(start_process(argv, env, workdir / log))
            wait_ready(procs[-1], workdir / log)
        procs.append(start_process([sys.executable, "-m", "web"], env, workdir / "web.log"))
        wait_healthy(port, procs[-1], workdir / "web.log", 60)
        inference = psutil.Process(procs[0].pid)
        peak = PeakRss(inference.pid)

        stop_at = threading.Event()
        seen: Seen = []
        reader = threading.Thread(target=collect, args=(settings, stop_at, seen), daemon=True)
        reader.start()
        print(
            f"cameras alone: {args.cameras} x {args.fps:g} FPS for {args.seconds:g} s", flush=True
        )
        alone = phase(settings, frames, args.fps, args.seconds, args.warmup, seen)

        print("cameras + requests ...", flush=True)
        rss_start = inference.memory_info().rss / 2**20
        series = RssSeries(inference.pid)
        with_requests: dict[str, Any] = {}
        cameras = threading.Thread(
            target=lambda: with_requests.update(
                phase(settings, frames, args.fps, args.seconds, args.warmup, seen)
            )
        )
        cameras.start()
        load = Load(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws", args.cancel_every)
        asyncio.run(load.run({"image": image, "clip": clip}, schedule_of(args), drain_s=60))
        cameras.join()
        rss_end = inference.memory_info().rss / 2**20
        rss_series = series.stop()
        stop_at.set()
        reader.join(10)
        rss_peak = peak.stop()
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        broker.stop()

    cancels = [
        (t.outcome["ts_ms"] - t.cancel_sent * 1000)
        for t in load.tracked
        if t.cancel_sent is not None and t.outcome and t.outcome["type"] == "cancelled"
    ]
    lanes = {lane.value: lane_figures(load.tracked, lane.value) for lane in LANE_ORDER}
    clips = lane_figures(load.tracked, "normal", media="clip")
    clips["frames_per_clip"] = round(args.clip_s * 4) if args.clip_every_s else 0
    clips["clip_bytes"] = len(clip)
    half = len(rss_series) // 2
    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores",
        "cameras": args.cameras,
        "camera_fps_offered": args.cameras * args.fps,
        "camera_fps_alone": alone["results_per_s"],
        "camera_fps_with_requests": with_requests["results_per_s"],
        "camera_fps_change": with_requests["results_per_s"] / alone["results_per_s"] - 1,
        "camera_latency_ms_p50_alone": alone["latency_ms_p50"],
        "camera_latency_ms_p50_with_requests": with_requests["latency_ms_p50"],
        "requests_submitted": sum(f["submitted"] for f in lanes.values()) + clips["submitted"],
        "requests_refused": load.refused,
        "lanes": lanes,
        "clips": clips,
        "cancel_to_stop_ms": percentiles(cancels),
        "cancels": len(cancels),
        "ws_latency_ms": percentiles(load.ws_latency_ms),
        "ws_events": len(load.ws_latency_ms),
        "ws_backpressure_states": load.backpressure,
        "resubscribed": load.resubscribed,
        "reread_after_shed": load.reread_after_shed,
        "ws_errors": load.errors,
        "missed_server_states": load.missed_server_states,
        "worker_rss_mb_start": rss_start,
        "worker_rss_mb_end": rss_end,
        "worker_rss_mb_peak": rss_peak,
        # Over the first and the second half of the requests phase: a warm-up grows in
        # the first, a leak in both.
        "worker_rss_mb_growth_first_half": rss_series[half] - rss_series[0],
        "worker_rss_mb_growth_second_half": rss_series[-1] - rss_series[half],
        "worker_rss_mb_series": rss_series[:: max(1, len(rss_series) // 20)],
        "load": {k: v for k, v in vars(args).items() if k != "output"},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print_table(out)
    print(f"wrote {args.output}")
    return 0


def street_clip(seconds: float, folder: Path) -> bytes:
    """A camera's street, ``seconds`` long at 10 FPS, as MPEG-4 in MP4 (what OpenCV writes)."""
    scene = SyntheticScene(1)
    path = str(folder / "street.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*"mp4v"), 10, (640, 480))
    for i in range(round(seconds * 10)):
        writer.write(scene.render(i / 10)[0])
    writer.release()
    return Path(path).read_bytes()


class RssSeries:
    """A process's resident memory (MB), sampled each second until stopped."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.samples.append(self.process.memory_info().rss / 2**20)
            if self._stop.wait(1.0):
                return

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.samples


def wait_ready(proc: Any, log: Path) -> None:
    deadline = time.monotonic() + 120
    while "[^Worker]: Ready" not in log.read_text(errors="replace"):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{log.name} not ready:\n" + log.read_text()[-3000:])
        time.sleep(0.2)  # polling the worker's log for its ready line


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def print_table(out: dict[str, Any]) -> None:
    print()
    head = ("lane", "sent", "done", "cancel", "missed", "first tok p50/p99", "complete p50/p99")
    print(f"{head[0]:8}{head[1]:>6}{head[2]:>6}{head[3]:>8}{head[4]:>8}{head[5]:>20}{head[6]:>20}")
    for lane, f in out["lanes"].items():
        first = f"{fmt(f['to_first_token_ms']['p50'])} / {fmt(f['to_first_token_ms']['p99'])}"
        done = f"{fmt(f['to_complete_ms']['p50'])} / {fmt(f['to_complete_ms']['p99'])}"
        print(
            f"{lane:8}{f['submitted']:>6}{f['completed']:>6}{f['cancelled']:>8}"
            f"{f['deadline_missed']:>8}{first:>20}{done:>20}"
        )
    print(
        f"\ncameras: {out['camera_fps_alone']:.1f} results/s alone, "
        f"{out['camera_fps_with_requests']:.1f} with the requests "
        f"({out['camera_fps_change']:+.1%}); latency p50 {out['camera_latency_ms_p50_alone']:.0f}"
        f" -> {out['camera_latency_ms_p50_with_requests']:.0f} ms"
    )
    ws, cancel = out["ws_latency_ms"], out["cancel_to_stop_ms"]
    print(
        f"WebSocket, event production -> client: p50 {fmt(ws['p50'])} ms, p99 {fmt(ws['p99'])} ms"
        f" ({out['ws_events']} events; target < 200 ms)"
    )
    print(f"cancel -> cancelled: p50 {fmt(cancel['p50'])} ms, p99 {fmt(cancel['p99'])} ms")
    print(
        f"backpressure messages the client was sent: {out['ws_backpressure_states'] or 'none'} "
        f"({out['reread_after_shed']} requests read anew after a shed); "
        f"requests whose end it missed and read back by subscribing anew: {out['resubscribed']}"
        f" (the server's state of them then: {out['missed_server_states'] or '-'}); "
        f"errors the server sent: {out['ws_errors'] or 'none'}"
    )
    worker_first = {k: f["worker_first_token_ms"]["p50"] for k, f in out["lanes"].items()}
    gaps = {k: f["mean_token_gap_ms"] for k, f in out["lanes"].items()}
    print(f"worker's first token after work starts, p50 ms (target < 200): {worker_first}")
    print(f"mean gap between tokens, ms (target < 50): {gaps}")
    print(
        f"inference worker RSS: {out['worker_rss_mb_start']:.0f} MB at the start of the "
        f"requests, {out['worker_rss_mb_end']:.0f} at the end, peak {out['worker_rss_mb_peak']:.0f}"
    )
    clips = out["clips"]
    if clips["submitted"]:
        done = clips["to_complete_ms"]
        print(
            f"clips (normal lane, {clips['frames_per_clip']} frames each): "
            f"{clips['completed']} of {clips['submitted']} completed, "
            f"{clips['deadline_missed']} missed their deadline; complete p50 "
            f"{fmt(done['p50'])} / p99 {fmt(done['p99'])} ms"
        )
    print(
        f"worker RSS growth over the first / second half of the requests: "
        f"{out['worker_rss_mb_growth_first_half']:+.0f} / "
        f"{out['worker_rss_mb_growth_second_half']:+.0f} MB"
    )
    if out["requests_refused"]:
        print(f"refused at submit: {out['requests_refused']}")


if __name__ == "__main__":
    raise SystemExit(main())
