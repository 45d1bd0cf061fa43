"""On-demand analysis on the real broker, with a real inference worker and model.

A plain confluent-kafka client submits requests on the lane topics and reads
``analysis.events`` as any downstream consumer would, validating each event against
the committed JSON Schema.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import cv2
import httpx
import jsonschema
import orjson
import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from websockets.asyncio.client import ClientConnection, connect

from kestrel.broker import LocalKafka
from kestrel.camera.synthetic import SyntheticScene
from kestrel.deadletter import DeadLetter
from kestrel.settings import Settings
from kestrel.topics import ANALYSIS_CANCEL, ANALYSIS_EVENTS, DEADLETTER, ensure_topics
from tests.conftest import settings_for
from tests.kafka_helpers import REPO, FaustWorker, read_until
from tests.web.test_protocol import Server, hello, receive
from web.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SCHEMA = json.loads((REPO / "kestrel" / "schemas" / "analysis_event.json").read_text())
FINAL = {"complete", "cancelled"}


def street_jpeg() -> bytes:
    image, _ = SyntheticScene(4).render(2.0)  # people walking, as the cameras show
    return bytes(cv2.imencode(".jpg", image)[1])


def submit(settings: Settings, lane: str, value: bytes, key: str) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    producer.produce(settings.topic(f"analysis.requests.{lane}"), value, key.encode())
    assert producer.flush(10) == 0


def request(request_id: str, lane: str, **fields: Any) -> bytes:
    return orjson.dumps(
        {
            "request_id": request_id,
            "priority": lane,
            "submitted_ms": time.time_ns() // 1_000_000,
            "image": base64.b64encode(street_jpeg()).decode(),
            **fields,
        }
    )


def ended(ids: set[str]) -> Any:
    def done(messages: list[Message]) -> bool:
        over = set()
        for m in messages:
            event = orjson.loads(m.value() or b"")
            final = event["type"] in FINAL
            final |= event["type"] == "error" and not event["payload"]["recoverable"]
            if final:
                over.add(event["request_id"])
        return ids <= over

    return done


def events_of(settings: Settings, ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    messages = read_until(settings, ANALYSIS_EVENTS.name(settings), ended(ids), 90)
    by_id: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for m in messages:
        event = orjson.loads(m.value() or b"")
        jsonschema.validate(event, SCHEMA)
        assert m.key() == event["request_id"].encode()
        if event["request_id"] in by_id:
            by_id[event["request_id"]].append(event)
    return by_id


def test_a_kafka_client_submits_an_image_and_reads_its_phases_tokens_and_summary(
    analysis_worker: tuple[Settings, FaustWorker],
) -> None:
    worker, _ = analysis_worker
    request_id = f"direct-{uuid.uuid4().hex[:8]}"
    submit(worker, "urgent", request(request_id, "urgent", max_items=20), request_id)
    events = events_of(worker, {request_id})[request_id]

    assert [e["seq"] for e in events] == list(range(len(events)))  # in order, numbered
    phases = [e["payload"]["phase"] for e in events if e["type"] == "stream_update"]
    assert phases[0] == "queued"
    assert phases.index("image_analysis") < phases.index("context") < phases.index("generation")
    assert phases[-1] == "validation"
    progress = [e["payload"]["progress"] for e in events if e["type"] == "stream_update"]
    assert progress == sorted(progress)
    tokens = [e["payload"] for e in events if e["type"] == "token"]
    assert tokens, "the detector found nobody in a street of walkers"
    assert [t["position"] for t in tokens] == list(range(len(tokens)))
    assert {t["data"]["label"] for t in tokens} == {"person"}
    complete = events[-1]
    assert complete["type"] == "complete"
    summary, result = complete["payload"]["summary"], complete["payload"]["result"]
    assert summary["total_tokens"] == len(tokens) == len(result["findings"])
    assert result["counts"] == {"person": len(tokens)}
    assert summary["max_memory_usage_mb"] > 0 and summary["most_common_batch_size"] >= 1
    assert summary["total_ms"] < 2_000  # an urgent request met its deadline


def test_a_cancel_a_late_request_and_a_malformed_one_each_end_clearly(
    analysis_worker: tuple[Settings, FaustWorker],
) -> None:
    worker, inference = analysis_worker
    suffix = uuid.uuid4().hex[:8]
    cancelled, late, garbage = f"cancel-{suffix}", f"late-{suffix}", f"garbage-{suffix}"
    producer = Producer({"bootstrap.servers": worker.bootstrap_servers})
    cancel = {"request_id": cancelled, "requested_ms": time.time_ns() // 1_000_000}
    producer.produce(ANALYSIS_CANCEL.name(worker), orjson.dumps(cancel))
    assert producer.flush(10) == 0
    # The cancel is on its own topic: once the worker has it, the request ends on arrival.
    inference.wait_for_log(f"cancel of {cancelled}", timeout_s=30)
    submit(worker, "normal", request(cancelled, "normal"), cancelled)
    submit(worker, "high", request(late, "high", deadline_ms=1_000), late)
    submit(worker, "low", b'{"request_id": "' + garbage.encode() + b'", "image": 5}', garbage)

    events = events_of(worker, {cancelled, late})
    outcome = events[cancelled][-1]
    assert [e["type"] for e in events[cancelled]] == ["cancelled"]
    assert outcome["payload"]["phase"] == "queued"
    error = events[late][-1]
    assert error["type"] == "error" and error["payload"]["code"] == "deadline_exceeded"
    assert error["payload"]["recoverable"] is False

    def dead(messages: list[Message]) -> bool:
        return any(m.key() == garbage.encode() for m in messages)

    letters = read_until(worker, DEADLETTER.name(worker), dead, 60)
    [letter] = [m for m in letters if m.key() == garbage.encode()]
    parsed = DeadLetter.from_headers(dict(letter.headers() or []))  # type: ignore[arg-type]
    assert parsed.reason == "bad_request" and parsed.topic.endswith("analysis.requests.low")


# Through the web server: uploads, the WebSocket channel, status and cancel -------------
def street_png() -> bytes:
    image, _ = SyntheticScene(4).render(2.0)
    return bytes(cv2.imencode(".png", image)[1])  # lossless: the quality search has work


async def follow(ws: ClientConnection, channel: str) -> list[dict[str, Any]]:
    """Subscribe, then collect the request's events (backfill, then updates) to its end."""
    await ws.send(orjson.dumps({"type": "subscribe", "payload": {"channels": [channel]}}).decode())
    events: dict[int, dict[str, Any]] = {}
    while True:
        message = await receive(ws)
        if message["type"] == "backfill" and message["channel"] == channel:
            for event in message["payload"]["events"]:
                events.setdefault(event["seq"], event)
        elif message["type"] == "update" and message["channel"] == channel:
            events.setdefault(message["payload"]["seq"], message["payload"])
        else:
            continue
        last = events[max(events)]
        if last["type"] in FINAL or (
            last["type"] == "error" and not last["payload"]["recoverable"]
        ):
            return [events[seq] for seq in sorted(events)]


@pytest.mark.asyncio
async def test_an_upload_streams_its_phases_and_tokens_to_a_websocket_and_survives_a_restart(
    analysis_worker: tuple[Settings, FaustWorker],
) -> None:
    settings, _ = analysis_worker
    server = Server(create_app(settings))
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    png = street_png()
    try:
        async with httpx.AsyncClient(timeout=30) as http, connect(server.ws_url) as ws:
            await hello(ws)
            answer = await http.post(
                f"{base}/api/v1/stream/analyze",
                files={"file": ("street.png", png, "image/png")},
                data={"priority": "high", "max_items": "50"},
            )
            assert answer.status_code == 202, answer.text
            accepted = answer.json()
            request_id, channel = accepted["id"], accepted["channel"]
            assert accepted["status_url"] == f"/api/v1/stream/status/{request_id}"
            upload = accepted["upload"]
            assert upload["original_bytes"] == len(png) > upload["compressed_bytes"]
            assert upload["format"] == "jpeg" and upload["quality"] >= 40

            events = await asyncio.wait_for(follow(ws, channel), 60)
            assert [e["seq"] for e in events] == list(range(len(events)))
            kinds = [e["type"] for e in events]
            assert kinds[:5] == ["upload_update"] * 5 and kinds[-1] == "complete"
            uploads = [e["payload"]["phase"] for e in events[:5]]
            assert uploads == ["received", "waiting", "compressing", "compressed", "submitted"]
            tokens = [e for e in events if e["type"] == "token"]
            assert tokens and all(e["payload"]["data"]["label"] == "person" for e in tokens)

            status = (await http.get(f"{base}{accepted['status_url']}")).json()
            assert status["state"] == "complete" and status["progress"] == 100.0
            assert status["tokens"] == len(tokens) and status["lane"] == "high"
            mine = (await http.get(f"{base}/api/v1/status/upload/{request_id}")).json()
            assert mine["phase"] == "submitted" and mine["compressed_bytes"] > 0
            queue = (await http.get(f"{base}/api/v1/status/upload-queue")).json()
            assert queue["concurrency"] == 5 and queue["preparing"] == 0
            board = (await http.get(f"{base}/api/v1/status/dashboard")).json()
            assert board["requests"]["by_state"].get("complete", 0) >= 1
    finally:
        server.stop()

    # A new server reads the request's events from the topic: a client that reconnects
    # gets everything, in order.
    again = Server(create_app(settings))
    again.start()
    try:
        async with connect(again.ws_url) as ws:
            await hello(ws)
            replayed = await asyncio.wait_for(follow(ws, channel), 30)
        assert replayed == events
    finally:
        again.stop()


@pytest.mark.asyncio
async def test_bad_uploads_get_a_clear_4xx_and_leave_nothing_behind(
    analysis_worker: tuple[Settings, FaustWorker], tmp_path: Path
) -> None:
    settings, _ = analysis_worker
    small = settings.model_copy(update={"upload_max_bytes": 50_000})
    server = Server(create_app(small))
    server.start()
    url = f"http://127.0.0.1:{server.port}/api/v1/stream/analyze"
    events_before = end_offsets(settings, ANALYSIS_EVENTS.name(settings))
    image, _ = SyntheticScene(1).render(0.0)
    tiny = bytes(cv2.imencode(".jpg", image[:64, :64])[1])  # under the limit: fields decide
    cases = [
        ({"file": ("a.txt", b"just text", "text/plain")}, {}, 415, "not_an_image"),
        ({"file": ("a.jpg", b"", "image/jpeg")}, {}, 400, "empty_upload"),
        ({"file": ("a.png", street_png(), "image/png")}, {}, 413, "upload_too_large"),
        ({"file": ("a.mp4", b"\x00\x00\x00\x18ftypmp42", "video/mp4")}, {}, 415, "not_a_clip"),
        ({"file": ("a.jpg", tiny, "image/jpeg")}, {"priority": "asap"}, 400, "bad_field"),
        ({"file": ("a.jpg", tiny, "image/jpeg")}, {"max_items": "0"}, 400, "bad_field"),
        (
            {"file": ("a.jpg", tiny, "image/jpeg")},
            {"deadline_ms": "nan"},
            400,
            "bad_field",
        ),
        ({}, {"priority": "low"}, 400, "no_file"),
    ]
    try:
        known = set(server.dashboard.analyze.book.requests)  # earlier tests' requests
        async with httpx.AsyncClient(timeout=30) as http:
            for files, data, status, code in cases:
                answer = await http.post(url, files=files or None, data=data)
                assert (answer.status_code, answer.json()["error"]) == (status, code), answer.text
            assert set(server.dashboard.analyze.book.requests) == known
            assert server.dashboard.analyze.queue.uploads == {}
    finally:
        server.stop()
    assert end_offsets(settings, ANALYSIS_EVENTS.name(settings)) == events_before


def end_offsets(settings: Settings, topic: str) -> list[int]:
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "offsets"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in sorted(partitions)
        ]
    finally:
        consumer.close()


@pytest.mark.asyncio
async def test_a_request_cancelled_while_no_worker_runs_ends_cancelled_and_never_runs(
    analysis_worker: tuple[Settings, FaustWorker],
) -> None:
    """DELETE while the worker is down; it reads the cancels before any request."""
    settings, inference = analysis_worker
    server = Server(create_app(settings))
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    inference.stop()
    try:
        async with httpx.AsyncClient(timeout=30) as http, connect(server.ws_url) as ws:
            await hello(ws)
            assert (await http.delete(f"{base}/api/v1/stream/nobody")).status_code == 404
            answer = await http.post(
                f"{base}/api/v1/stream/analyze",
                files={"file": ("street.jpg", street_jpeg(), "image/jpeg")},
                data={"priority": "low"},
            )
            request_id = answer.json()["id"]
            cancel = await http.delete(f"{base}/api/v1/stream/{request_id}")
            assert cancel.status_code == 202
            inference.start(ready_timeout_s=90)
            events = await asyncio.wait_for(follow(ws, f"analysis:{request_id}"), 60)
        assert events[-1]["type"] == "cancelled"
        assert events[-1]["payload"]["phase"] == "queued"
        assert not [e for e in events if e["type"] in ("token", "stream_update")]
    finally:
        server.stop()
        if not inference.alive:
            inference.start(ready_timeout_s=90)


@pytest.mark.asyncio
async def test_generate_and_cancel_over_the_websocket(
    analysis_worker: tuple[Settings, FaustWorker],
) -> None:
    settings, _ = analysis_worker
    server = Server(create_app(settings))
    server.start()
    image, _ = SyntheticScene(2).render(1.0)
    small = cv2.resize(image, (160, 120))
    inline = base64.b64encode(bytes(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])[1]))
    try:
        async with connect(server.ws_url) as ws:
            await hello(ws)
            generate = {
                "type": "generate",
                "id": "g1",
                "payload": {"image": inline.decode(), "params": {"priority": "urgent"}},
            }
            await ws.send(orjson.dumps(generate).decode())
            while (accepted := await receive(ws))["type"] != "accepted":
                pass
            assert accepted["correlation_id"] == "g1"
            request_id = accepted["payload"]["id"]
            events = await asyncio.wait_for(follow(ws, f"analysis:{request_id}"), 60)
            assert events[-1]["type"] == "complete"
            assert [e["seq"] for e in events] == list(range(len(events)))

            bad = {"type": "generate", "id": "g2", "payload": {"image": "not base64!"}}
            await ws.send(orjson.dumps(bad).decode())
            while (error := await receive(ws)).get("correlation_id") != "g2":
                pass
            assert error["payload"]["code"] == "bad_field"
            await ws.send(
                orjson.dumps({"type": "cancel", "id": "c", "payload": {"id": "x"}}).decode()
            )
            while (error := await receive(ws)).get("correlation_id") != "c":
                pass
            assert error["payload"]["code"] == "unknown_request"
    finally:
        server.stop()


def test_under_extreme_memory_pressure_low_requests_are_shed_and_urgent_ones_served(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    """A worker whose memory budget it always exceeds: it is at `extreme` from its
    first batch on, so it refuses low requests and still serves the urgent ones."""
    settings = settings_for(kafka, tmp_path, worker_memory_mb=1.0)
    ensure_topics(settings)
    worker = FaustWorker(settings, tmp_path / "inference.log", app="faust_app:inference")
    try:
        worker.start(ready_timeout_s=90)
        suffix = uuid.uuid4().hex[:8]
        urgent, low = f"urgent-{suffix}", f"low-{suffix}"
        submit(settings, "urgent", request(urgent, "urgent"), urgent)
        events = events_of(settings, {urgent})  # its batch saw the pressure
        assert events[urgent][-1]["type"] == "complete"
        submit(settings, "low", request(low, "low"), low)
        shed = events_of(settings, {low})[low][-1]
        assert shed["type"] == "error" and shed["payload"]["code"] == "memory_pressure"
        worker.wait_for_log("memory extreme", timeout_s=10)
    finally:
        worker.stop()
