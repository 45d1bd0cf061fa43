"""Clips on the real broker, with a real inference worker and model.

A street clip (the synthetic cameras' walkers, encoded by OpenCV's FFmpeg) submitted
straight on Kafka by a plain client, and through the web server (staged, then
generated over the WebSocket by its upload id, and cancelled midway); bad clips.
"""

from __future__ import annotations

import asyncio
import base64
import math
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import httpx
import numpy as np
import orjson
import pytest
from websockets.asyncio.client import connect

from kestrel.camera.synthetic import SyntheticScene
from kestrel.settings import Settings
from tests.integration.test_ondemand import end_offsets, events_of, follow, submit
from tests.kafka_helpers import FaustWorker
from tests.web.test_protocol import Server, hello, receive
from web.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def street_clip(seconds: float, fps: float = 10.0, noise: bool = False) -> bytes:
    """The synthetic street, ``seconds`` long (MPEG-4 in MP4); ``noise`` makes it big."""
    scene = SyntheticScene(4)
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "street.mp4")
        first, _ = scene.render(0.0)
        size = (first.shape[1], first.shape[0])
        writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
        rng = np.random.default_rng(0)
        for i in range(round(seconds * fps)):
            image, _ = scene.render(2.0 + i / fps)
            if noise:
                image = rng.integers(0, 256, image.shape, dtype=np.uint8)
            writer.write(image)
        writer.release()
        return Path(path).read_bytes()


def test_a_kafka_client_submits_a_clip_and_gets_each_frame_tracked(
    analysis_worker: tuple[Settings, FaustWorker],
) -> None:
    settings, _ = analysis_worker
    request_id = f"clip-{uuid.uuid4().hex[:8]}"
    value = orjson.dumps(
        {
            "request_id": request_id,
            "priority": "normal",
            "submitted_ms": time.time_ns() // 1_000_000,
            "deadline_ms": time.time_ns() // 1_000_000 + 60_000,
            "clip": base64.b64encode(street_clip(3.0)).decode(),
        }
    )
    submit(settings, "normal", value, request_id)
    events = events_of(settings, {request_id})[request_id]

    assert [e["seq"] for e in events] == list(range(len(events)))
    updates = [e["payload"] for e in events if e["type"] == "stream_update"]
    detected = [u["detail"] for u in updates if u["detail"].startswith("frame ")]
    assert detected == [f"frame {i} of 12" for i in range(1, 13)]  # 3 s at 4 a second
    assert [u["progress"] for u in updates] == sorted(u["progress"] for u in updates)
    assert "tracking over 12 frames" in [u["detail"] for u in updates]
    tokens = [e["payload"]["data"] for e in events if e["type"] == "token"]
    assert [t["position"] for t in tokens] == list(range(12))
    # Frame i of 12 is the clip's first at or after i / 4 s: a 10 FPS clip has one each 100 ms.
    assert [t["t_ms"] for t in tokens] == [math.ceil(i * 2.5) * 100 for i in range(12)]
    complete = events[-1]
    assert complete["type"] == "complete", complete
    result = complete["payload"]["result"]
    assert result["media"] == "clip" and result["frames"] == tokens
    followed = [t for t in result["tracks"] if t["frames"] >= 6]
    assert followed, "no walker was followed through half the clip"
    assert set(result["counts"]) == {"person"} and result["counts"]["person"] >= len(followed)
    for track in followed:  # the same id in every frame that saw it
        seen = [
            t["frame"]
            for t in tokens
            if any(f["track_id"] == track["track_id"] for f in t["findings"])
        ]
        assert len(seen) == track["frames"]


@pytest.mark.asyncio
async def test_a_staged_clip_generated_over_the_websocket_is_cancelled_midway(
    analysis_worker: tuple[Settings, FaustWorker],
) -> None:
    settings, _ = analysis_worker
    server = Server(create_app(settings))
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    clip = street_clip(10.0, fps=5.0)  # 41 frames to analyse: time to cancel it midway
    try:
        async with httpx.AsyncClient(timeout=30) as http, connect(server.ws_url) as ws:
            await hello(ws)
            staged = await http.post(
                f"{base}/api/v1/uploads", files={"file": ("street.mp4", clip, "video/mp4")}
            )
            assert staged.status_code == 201, staged.text
            upload = staged.json()
            assert (upload["media"], upload["format"], upload["frames"]) == ("clip", "mp4", 50)
            generate = {
                "type": "generate",
                "id": "g",
                "payload": {"upload_id": upload["upload_id"], "params": {"priority": "low"}},
            }
            await ws.send(orjson.dumps(generate).decode())
            while (accepted := await receive(ws))["type"] != "accepted":
                pass
            request_id = accepted["payload"]["id"]
            assert request_id == upload["upload_id"] and accepted["payload"]["media"] == "clip"
            channel = f"analysis:{request_id}"
            while True:  # the first frame is done: the clip is midway
                message = await asyncio.wait_for(receive(ws), 60)
                payload = message.get("payload") or {}
                if (
                    message.get("channel") == channel
                    and payload.get("type") == "stream_update"
                    and payload["payload"]["detail"].startswith("frame 1 of")
                ):
                    break
            cancel = await http.delete(f"{base}/api/v1/stream/{request_id}")
            assert cancel.status_code == 202
            await asyncio.wait_for(follow(ws, channel), 60)
        async with connect(server.ws_url) as fresh:  # all of its events, as a backfill
            await hello(fresh)
            events = await asyncio.wait_for(follow(fresh, channel), 60)
        async with httpx.AsyncClient(timeout=30) as http:
            assert events[-1]["type"] == "cancelled", events[-1]
            assert events[-1]["payload"]["phase"] == "image_analysis"
            kinds = [e["type"] for e in events]
            assert kinds.count("cancelled") == 1 and "token" not in kinds
            frames = [e for e in events if e["payload"].get("detail", "").startswith("frame ")]
            assert 1 <= len(frames) < 41
            uploads = [e["payload"]["phase"] for e in events if e["type"] == "upload_update"]
            assert uploads == ["received", "waiting", "checked", "submitted"]
            # Used once: the same upload id again is unknown.
            again = await http.post(
                f"{base}/api/v1/stream/analyze", data={"upload_id": upload["upload_id"]}
            )
            assert (again.status_code, again.json()["error"]) == (404, "unknown_upload")
    finally:
        server.stop()


@pytest.mark.asyncio
async def test_a_clip_of_megabytes_goes_through_the_api_and_kafka_at_urgent_priority(
    analysis_worker: tuple[Settings, FaustWorker],
) -> None:
    """A record of megabytes on the request topic (past aiokafka's 1 MB fetch default)."""
    settings, _ = analysis_worker
    server = Server(create_app(settings))
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    clip = street_clip(1.0, noise=True)
    assert len(clip) > 1_500_000
    try:
        async with httpx.AsyncClient(timeout=30) as http, connect(server.ws_url) as ws:
            await hello(ws)
            answer = await http.post(
                f"{base}/api/v1/stream/analyze",
                files={"file": ("noise.mp4", clip, "video/mp4")},
                data={"priority": "urgent", "deadline_ms": "30000"},
            )
            assert answer.status_code == 202, answer.text
            accepted = answer.json()
            assert accepted["media"] == "clip" and accepted["upload"]["frames"] == 10
            events = await asyncio.wait_for(follow(ws, accepted["channel"]), 60)
        assert events[-1]["type"] == "complete", events[-1]
        result = events[-1]["payload"]["result"]
        assert [f["t_ms"] for f in result["frames"]] == [0, 300, 500, 800]
        assert (result["width"], result["height"]) == (640, 480)
    finally:
        server.stop()


@pytest.mark.asyncio
async def test_bad_clips_get_a_clear_4xx_and_leave_nothing_behind(
    analysis_worker: tuple[Settings, FaustWorker],
) -> None:
    settings, _ = analysis_worker
    strict = settings.model_copy(update={"clip_max_s": 2.0, "clip_max_bytes": 500_000})
    server = Server(create_app(strict))
    server.start()
    url = f"http://127.0.0.1:{server.port}/api/v1/stream/analyze"
    topic = settings.topic("analysis.events")
    events_before = end_offsets(settings, topic)
    cases = [
        (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, 415, "not_a_clip"),
        (street_clip(3.0), 413, "clip_too_long"),
        (street_clip(1.0, noise=True), 413, "clip_too_large"),
    ]
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for data, status, code in cases:
                files = {"file": ("a.mp4", data, "video/mp4")}
                answer = await http.post(url, files=files, data={"priority": "high"})
                assert (answer.status_code, answer.json()["error"]) == (status, code), answer.text
            assert server.dashboard.analyze.queue.uploads == {}
    finally:
        server.stop()
    assert end_offsets(settings, topic) == events_before
