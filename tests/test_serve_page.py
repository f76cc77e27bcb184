"""The chat page at `/` in headless Chromium (Debian's `chromium`, driven by Playwright) against the real server
on loopback: type a question, attach an image, watch the answer stream in. The screenshot is kept in
$NATIVEVL_ARTIFACTS (default: test-artifacts/ at the repository root)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from reference import tiny_checkpoint
from test_serve import start_server

from nativevl import Pipeline

CHROMIUM = os.environ.get("NATIVEVL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# The flags this machine needs: no sandbox as root, and no background traffic to hosts it cannot reach.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("NATIVEVL_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def test_chat_page_streams_an_answer_about_an_attached_image(tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is needed: `make test` installs Debian's (tools/ensure_chromium.sh)"
    ckpt = tiny_checkpoint(tmp_path / "tiny")
    proc, url = start_server(ckpt)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(url)
            assert "tiny" in page.title()
            page.set_input_files("#image", str(ckpt / "photo.png"))
            page.wait_for_selector("text=attached: photo.png")
            page.fill("#question", "What is in the picture?")
            page.click("#send")
            answer = page.locator(".assistant").last
            page.wait_for_function("() => document.querySelector('.assistant').textContent.length > 0")
            streaming_seen = answer.get_attribute("data-state") == "streaming"
            page.wait_for_selector(".assistant[data-state=done]", timeout=120_000)
            shown = answer.inner_text()
            assert page.locator(".user img").count() == 1  # the attached image is shown with the question
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)
            # a second turn goes out with the first as history
            page.fill("#question", "And now?")
            page.keyboard.press("Enter")
            page.wait_for_selector(".assistant >> nth=1", timeout=60_000)
            page.wait_for_function("() => document.querySelectorAll('.assistant[data-state=done]').length == 2",
                                   timeout=120_000)
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    expected = Pipeline(ckpt)("What is in the picture?", images=[ckpt / "photo.png"], max_new_tokens=512)
    assert streaming_seen and shown == expected
    assert (ARTIFACTS / "chat-page.png").stat().st_size > 10_000
