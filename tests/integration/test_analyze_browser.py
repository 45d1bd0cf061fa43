"""The page's Analyze panel in real headless Chromium, with a real inference worker.

A person picks an image, chooses a priority and submits: the panel shows the upload
and the phases, lists each finding as its token arrives, draws its box on the image,
and shows the summary; a file that is not an image is refused with the server's
reason. A clip's frames arrive one by one, each drawn from the clip itself with its
tracked boxes, and a slider picks any of them. The server has a token, as a published
one must.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
from playwright.sync_api import sync_playwright

from kestrel.broker import LocalKafka
from kestrel.camera.synthetic import SyntheticScene
from kestrel.settings import Settings
from kestrel.topics import ensure_topics
from tests.conftest import settings_for
from tests.integration.test_dashboard_browser import ARTIFACTS, TOKEN, open_page
from tests.kafka_helpers import FaustWorker
from tests.web.test_protocol import Server
from web.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def inference(kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    tmp_path = tmp_path_factory.mktemp("analyze-browser")
    settings = settings_for(kafka, tmp_path, web_token=TOKEN)
    ensure_topics(settings)
    worker = FaustWorker(settings, tmp_path / "inference.log", app="faust_app:inference")
    try:
        worker.start(ready_timeout_s=90)
        yield settings
    finally:
        worker.stop()


def test_a_person_analyses_an_image_and_watches_the_findings_arrive(
    inference: Settings, tmp_path: Path
) -> None:
    image, _ = SyntheticScene(4).render(2.0)
    street = tmp_path / "street.png"
    cv2.imwrite(str(street), image)
    notes = tmp_path / "notes.jpg"
    notes.write_bytes(b"this is not a picture")
    server = Server(create_app(inference))
    server.start()
    try:
        with sync_playwright() as p:
            browser, page, errors = open_page(p, tmp_path, height=1200)
            page.goto(f"http://127.0.0.1:{server.port}/?token={TOKEN}")
            page.wait_for_selector("#connection[data-state=open]", timeout=20_000)

            page.set_input_files("#analyze-file", str(notes))
            page.click("#analyze-form button[type=submit]")
            page.wait_for_selector("#analyze-phase[data-phase='refused: not_an_image']")

            page.set_input_files("#analyze-file", str(street))
            page.select_option("#analyze-priority", "urgent")
            page.click("#analyze-form button[type=submit]")
            page.wait_for_selector("#analyze-phase[data-phase=complete]", timeout=60_000)
            findings = page.locator("#analyze-findings li").all_inner_texts()
            assert findings and all(text.startswith("person ") for text in findings)
            # Each finding's box was drawn on the image as its token came.
            page.wait_for_function(
                f"() => document.getElementById('analyze-canvas').dataset.boxes === "
                f"'{len(findings)}'",
                timeout=10_000,
            )
            assert page.eval_on_selector("#analyze-progress", "p => p.value") == 100
            assert "findings in" in page.inner_text("#analyze-summary")
            assert page.is_disabled("#analyze-cancel")  # nothing left to cancel
            # The worker's memory monitor, from its model metrics.
            page.wait_for_selector("#analyze-memory[data-level=normal]", timeout=30_000)
            assert "low requests shed 0" in page.inner_text("#analyze-memory")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.locator("#analyze-section").screenshot(path=str(ARTIFACTS / "analyze.png"))
            assert errors == []
            browser.close()
    finally:
        server.stop()


def test_a_person_analyses_a_clip_and_scrubs_through_its_tracked_frames(
    inference: Settings, tmp_path: Path
) -> None:
    scene = SyntheticScene(4)
    path = tmp_path / "street.webm"  # VP8: what a browser plays
    first, _ = scene.render(0.0)
    size = (first.shape[1], first.shape[0])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"VP80"), 10, size)
    for i in range(20):  # 2 s: 8 frames analysed at 4 a second
        writer.write(scene.render(2.0 + i / 10)[0])
    writer.release()
    server = Server(create_app(inference))
    server.start()
    try:
        with sync_playwright() as p:
            browser, page, errors = open_page(p, tmp_path, height=1400)
            page.goto(f"http://127.0.0.1:{server.port}/?token={TOKEN}")
            page.wait_for_selector("#connection[data-state=open]", timeout=20_000)
            page.set_input_files("#analyze-file", str(path))
            page.select_option("#analyze-priority", "high")
            page.click("#analyze-form button[type=submit]")
            page.wait_for_selector("#analyze-phase[data-phase=complete]", timeout=60_000)
            frames = page.locator("#analyze-findings li").all_inner_texts()
            assert [text.split(" at ")[0] for text in frames] == [
                f"frame {n}" for n in (0, 3, 5, 8, 10, 13, 15, 18)
            ]
            assert any("#1 person" in text for text in frames), frames
            summary = page.inner_text("#analyze-summary")
            assert summary.startswith("8 frames in") and "person" in summary
            # The browser plays the clip: the canvas shows its frames, at its size.
            assert page.eval_on_selector("#analyze-video", "v => v.videoWidth") == size[0]
            canvas = "document.getElementById('analyze-canvas').dataset"
            page.wait_for_function(f"() => {canvas}.frame === '7' && {canvas}.frames === '8'")
            page.eval_on_selector(
                "#analyze-frame",
                "s => { s.value = '0'; s.dispatchEvent(new Event('input')); }",
            )
            page.wait_for_function(f"() => {canvas}.frame === '0'", timeout=10_000)
            first_boxes = frames[0].count("person")
            page.wait_for_function(f"() => {canvas}.boxes === '{first_boxes}'", timeout=10_000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.locator("#analyze-section").screenshot(path=str(ARTIFACTS / "analyze-clip.png"))
            assert errors == []
            browser.close()
    finally:
        server.stop()
