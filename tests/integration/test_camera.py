"""The camera pipeline end to end on the real broker, run as users run it.

Synthetic cameras (``kestrel-camera``) -> ``camera.frames`` -> an inference worker
(``faust -A faust_app:inference worker``, the real SSDLite model) ->
``camera.detections`` -> a stream worker's tracking stage -> ``camera.results``, read
by a plain confluent-kafka consumer and validated against the committed JSON Schema.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import orjson
import pytest
from confluent_kafka import Message

from kestrel.broker import LocalKafka
from kestrel.camera.frames import FrameHeaders
from kestrel.camera.registry import register
from kestrel.camera.synthetic import SyntheticScene
from kestrel.deadletter import DeadLetter
from kestrel.producer import KestrelProducer
from kestrel.schemas.camera import CameraConfig, CameraResult
from kestrel.settings import Settings, child_environment
from kestrel.topics import (
    CAMERA_FRAMES,
    CAMERA_RESULTS,
    CAMERAS,
    DEADLETTER,
    METRICS_AGGREGATES,
    ensure_topics,
)
from tests.conftest import settings_for
from tests.kafka_helpers import REPO, FaustWorker, read_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SCHEMA = json.loads((REPO / "kestrel" / "schemas" / "camera_result.json").read_text())


@pytest.fixture
def pipeline(kafka: LocalKafka, tmp_path: Path) -> Iterator[Settings]:
    """An inference worker and a stream worker on a fresh namespace."""
    settings = settings_for(kafka, tmp_path, max_queue_delay_ms=10.0)
    ensure_topics(settings)
    workers = [
        FaustWorker(settings, tmp_path / "inference.log", app="faust_app:inference"),
        FaustWorker(settings, tmp_path / "stream.log"),
    ]
    try:
        for worker in workers:
            worker.start(ready_timeout_s=90)
        yield settings
    finally:
        for worker in workers:
            worker.stop()


def results_until(settings: Settings, done: object, timeout_s: float = 90) -> list[Message]:
    return read_until(settings, CAMERA_RESULTS.name(settings), done, timeout_s)  # type: ignore[arg-type]


def test_synthetic_cameras_flow_to_results_that_match_the_schema(
    pipeline: Settings, tmp_path: Path
) -> None:
    settings = pipeline
    truth_path = tmp_path / "truth.jsonl"
    camera = subprocess.run(
        [
            *(sys.executable, "-m", "kestrel.camera.cli", "--synthetic", "2", "--fps", "5"),
            *("--duration", "6", "--truth", str(truth_path)),
        ],
        cwd=REPO,
        env=child_environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    sent = sum(1 for _ in truth_path.open())
    assert sent >= 40, camera.stdout + camera.stderr  # two cameras, 5 fps, ~6 s

    messages = results_until(settings, lambda msgs: len(msgs) >= sent)
    assert len(messages) == sent  # every frame sent has exactly one result
    frame_ids = {orjson.loads(line)["frame_id"] for line in truth_path.open()}
    people = 0
    for message in messages:
        record = orjson.loads(message.value() or b"")
        jsonschema.validate(record, SCHEMA)
        result = CameraResult.model_validate(record)
        assert message.key() == result.camera_id.encode() and result.frame_id in frame_ids
        assert result.input_stream == CAMERA_FRAMES.name(settings)
        assert set(result.data.post_processing_result.agg_summary.line_crossings) == {"middle"}
        assert result.data.processing_time > 0
        people += len(result.data.post_processing_result.tracked_objects)
    assert people > 0  # the detector found the walkers, and the tracker confirmed them

    # Per-camera, per-class counts are windowed like any metric (source camera:<id>).
    def counted(msgs: list[Message]) -> bool:
        keys = {(m.key() or b"").decode() for m in msgs}
        return any(k.startswith("camera:synth-0|person|1s|") for k in keys)

    aggregates = read_until(settings, METRICS_AGGREGATES.name(settings), counted, 60)
    person = [
        orjson.loads(m.value() or b"")
        for m in aggregates
        if (m.key() or b"").decode().startswith("camera:synth-0|person|1s|")
    ]
    assert all(0 < a["count"] <= 6 for a in person)  # one count per frame, 5 FPS


def frame(camera_id: str, seq: int, jpeg: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    # Captured now: a frame older than KESTREL_FRAME_MAX_AGE_S is dropped as expired.
    headers = FrameHeaders.make(camera_id, time.time_ns() + seq, seq, 640, 480)
    return jpeg, headers.encode()


def test_bad_frames_go_to_the_dead_letters_and_the_camera_goes_on(pipeline: Settings) -> None:
    import cv2

    settings = pipeline
    producer = KestrelProducer(settings)
    register(producer, settings, CameraConfig(camera_id="door", source="synthetic:1", fps=5))
    producer.flush()
    image, _ = SyntheticScene(1).render(0.0)
    good = bytes(cv2.imencode(".jpg", image)[1])
    topic = CAMERA_FRAMES.name(settings)
    sends: list[tuple[bytes, bytes, list[tuple[str, bytes]], str | None]] = []
    sends.append((b"door", *frame("door", 0, good), None))
    sends.append((b"door", *frame("door", 1, b"\xff\xd8 not really a jpeg"), "corrupt_jpeg"))
    sends.append((b"nobody", *frame("nobody", 2, good), "unknown_camera"))
    sends.append(
        (
            b"door",
            b"\xff" * (settings.max_frame_bytes + 1),
            frame("door", 3, b"")[1],
            "frame_too_large",
        )
    )
    no_seq = [h for h in frame("door", 4, good)[1] if h[0] != "kestrel.seq"]
    sends.append((b"door", good, no_seq, "bad_header"))
    sends.append((b"door", *frame("door", 5, good), None))
    for key, value, headers, _ in sends:
        producer.send(topic, value, key, headers=headers)
    assert producer.flush() == 0

    expected = [reason for *_, reason in sends if reason is not None]
    letters = read_until(settings, DEADLETTER.name(settings), lambda m: len(m) >= len(expected), 60)
    parsed = []
    for letter in letters:
        pairs: list[tuple[str, bytes]] = list(letter.headers() or [])  # type: ignore[arg-type]
        parsed.append(DeadLetter.from_headers(dict(pairs)))
    assert sorted(p.reason for p in parsed) == sorted(expected)
    assert {p.stage for p in parsed} == {"inference"}
    assert all(p.topic == topic for p in parsed)
    # The two good frames still made it through.
    results = results_until(settings, lambda msgs: len(msgs) >= 2, 60)
    seqs = sorted(
        CameraResult.model_validate_json(m.value() or b"").data.metadata.seq for m in results
    )
    assert seqs == [0, 5]
    assert CAMERAS.name(settings)  # the registry topic is part of the catalogue


def test_cameras_come_and_go_with_the_config_file(pipeline: Settings, tmp_path: Path) -> None:
    """kestrel-camera --config: a camera added to the file starts, one removed stops."""
    settings = pipeline
    config = tmp_path / "cameras.yaml"
    config.write_text("cameras:\n  - {camera_id: one, source: 'synthetic:1', fps: 5}\n")
    producer = subprocess.Popen(
        [sys.executable, "-m", "kestrel.camera.cli", "--config", str(config)],
        cwd=REPO,
        env=child_environment(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def cameras_with_results(msgs: list[Message]) -> set[bytes]:
            return {m.key() or b"" for m in msgs}

        results_until(settings, lambda msgs: b"one" in cameras_with_results(msgs))
        config.write_text("cameras:\n  - {camera_id: two, source: 'synthetic:2', fps: 5}\n")
        results_until(settings, lambda msgs: b"two" in cameras_with_results(msgs))

        def registry(msgs: list[Message]) -> dict[bytes, bytes | None]:
            return {m.key() or b"": m.value() for m in msgs}

        # "one" left the file: its registry entry is now a tombstone; "two" is there.
        final = read_until(
            settings,
            CAMERAS.name(settings),
            lambda msgs: registry(msgs).get(b"one", b"") is None and b"two" in registry(msgs),
            30,
        )
        assert registry(final)[b"two"] is not None
    finally:
        producer.terminate()
        producer.wait(30)
