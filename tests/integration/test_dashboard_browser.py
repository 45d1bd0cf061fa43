"""The dashboard page in real headless Chromium, fed by a live pipeline on the real broker.

Runs what a user runs: stream and inference workers, a synthetic camera and the
system collector as processes, the dashboard server (uvicorn) in this process, and
Debian's Chromium driven by Playwright. The server has a token, as a published one
must: the page is refused until the browser opens it once with ``?token=``, and then
works on its cookie alone. It must show the camera tile drawing frames with boxes
and the system and model charts filling, keep going across a server restart (it
reconnects and resubscribes), and leave a screenshot in tests/artifacts/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Message
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright

from kestrel.broker import LocalKafka
from kestrel.schemas import parse_envelope
from kestrel.settings import Settings, child_environment, load_settings
from kestrel.topics import METRICS_UI, ensure_topics
from tests.conftest import settings_for
from tests.kafka_helpers import REPO, FaustWorker, read_until
from tests.web.test_protocol import Server
from tests.web.test_temporal import analysis
from web.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "tests" / "artifacts"
TOKEN = "browser-test-token"


@pytest.fixture
def pipeline(kafka: LocalKafka, tmp_path: Path) -> Iterator[Settings]:
    settings = settings_for(
        kafka, tmp_path, window_grace_s=0.5, flush_interval_s=0.2, web_token=TOKEN
    )
    ensure_topics(settings)
    workers = [
        FaustWorker(settings, tmp_path / "stream.log"),
        FaustWorker(settings, tmp_path / "inference.log", app="faust_app:inference"),
    ]
    env = child_environment(settings)
    producers = []
    try:
        for worker in workers:
            worker.start(ready_timeout_s=90)
        for argv in (
            ["kestrel.camera.cli", "--cameras", "1", "--fps", "5"],
            ["kestrel.collectors.cli", "system"],
        ):
            producers.append(
                subprocess.Popen(
                    [sys.executable, "-m", *argv],
                    cwd=REPO,
                    env=env,
                    stdout=(tmp_path / f"{argv[0]}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        yield settings
    finally:
        for proc in producers:
            proc.terminate()
            proc.wait(30)
        for worker in workers:
            worker.stop()


def open_page(p: Playwright, tmp_path: Path, height: int) -> tuple[BrowserContext, Page, list[str]]:
    """Debian's headless Chromium on a fresh profile, one page, and its script errors."""
    browser = p.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=CHROMIUM,
        headless=True,
        args=ARGS,
        viewport={"width": 1400, "height": height},
    )
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return browser, page, errors


def drawn(page: Page, selector: str) -> int:
    value = page.get_attribute(selector, "data-drawn")
    return int(value or 0)


def test_the_page_shows_live_cameras_and_charts_and_survives_a_restart(
    pipeline: Settings, tmp_path: Path
) -> None:
    server = Server(create_app(pipeline))
    server.start()
    port = server.port
    try:
        with sync_playwright() as p:
            browser, page, errors = open_page(p, tmp_path, height=900)
            refused = page.goto(f"http://127.0.0.1:{port}/")
            assert refused is not None and refused.status == 401
            page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")  # once: then the cookie
            assert page.url == f"http://127.0.0.1:{port}/"  # the token left the address
            page.wait_for_selector("#connection[data-state=open]", timeout=20_000)
            # A camera tile appears and draws frames with their boxes.
            page.wait_for_selector(".tile[data-drawn]", timeout=60_000)
            page.wait_for_function(
                "() => Number(document.querySelector('.tile').dataset.drawn) >= 3",
                timeout=60_000,
            )
            # The system charts fill with 1 s windows as they close.
            page.wait_for_function(
                "() => Number(document.querySelector('[data-field=cpu_percent]')"
                ".dataset.points || 0) >= 2",
                timeout=60_000,
            )
            # The inference worker's model metrics get charts of their own.
            page.wait_for_function(
                "() => [...document.querySelectorAll('.chart[data-source^=\"model:\"]')]"
                ".some((c) => Number(c.dataset.points || 0) >= 2)",
                timeout=60_000,
            )
            assert page.inner_text("#ux-frame") != "-"  # it measures its own frames

            # The server restarts: the page reconnects, resubscribes, and goes on.
            server.stop()
            page.wait_for_selector("#connection[data-state=closed]", timeout=20_000)
            server = Server(create_app(pipeline), port=port)
            server.start()
            page.wait_for_selector("#connection[data-state=open]", timeout=30_000)
            before = drawn(page, ".tile")
            page.wait_for_function(
                f"() => Number(document.querySelector('.tile').dataset.drawn) > {before}",
                timeout=60_000,
            )

            # The page's own frame timing reached Kafka as the digest's UX stream.
            def page_timing(msgs: list[Message]) -> bool:
                return any(
                    orjson.loads(m.value() or b"{}").get("data", {}).get("frame_time_ms")
                    for m in msgs
                )

            ux = read_until(pipeline, METRICS_UI.name(pipeline), page_timing, 30)
            envelope = parse_envelope(ux[-1].value() or b"")
            assert envelope.source == "ui" and "frame_time_ms" in envelope.data
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert errors == []
            browser.close()
    finally:
        server.stop()


def test_the_page_shows_each_watched_field_s_regime_and_matches(tmp_path: Path) -> None:
    server = Server(create_app(load_settings(data_dir=tmp_path), follow_kafka=False))
    server.start()
    try:
        server.call(server.dashboard.cache.add_temporal, analysis("fixed_point", 10_000))
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=CHROMIUM,
                headless=True,
                args=ARGS,
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.port}/")
            row = '#temporal tr[data-key="model:llm|tokens_per_second"]'
            page.wait_for_selector(f"{row}[data-regime=fixed_point]", timeout=20_000)
            # A new analysis reaches the open page live, with its period and matches.
            server.call(server.dashboard.cache.add_temporal, analysis("periodic", 20_000, 8.0))
            page.wait_for_selector(f"{row}[data-regime=periodic]", timeout=20_000)
            text = page.inner_text(row)
            assert "period 8.0 s" in text and "sawtooth (dtw 0.30" in text
            browser.close()
    finally:
        server.stop()
