"""A running daemon with the control page on (tiny model, pattern source, real OSC on loopback),
and headless Chromium driven by Playwright for the browser tests."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from bridge.daemon import Daemon, DaemonOptions
from tests.daemon.conftest import REPO, FeedbackListener, daemon_config, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def web_presets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web-presets")
    for f in (REPO / "presets").glob("*.yaml"):
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture(scope="module")
def web_feedback():
    fb = FeedbackListener()
    yield fb
    fb.close()


@pytest.fixture(scope="module")
def web_daemon(tiny_model_dir, web_presets, web_feedback):
    cfg = daemon_config(tiny_model_dir, web_presets, web_feedback.port,
                        **{"status.listen": "127.0.0.1:0", "status.control": True})
    d = Daemon(cfg, DaemonOptions(prewarm_timeout=30))
    d.start()
    assert wait_until(lambda: d.frames_rendered > 3 and d.publisher.last_frame is not None, 30), "no frames"
    yield d
    d.stop()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (the Debian package), or a skip that says what to install."""
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Chromium: apt-get install -y chromium chromium-driver")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests need Playwright: pip install -e '.[test]' (never `playwright install`: "
                    "the Debian Chromium is used)")
    with tempfile.TemporaryDirectory(prefix="sb-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 900})
        yield context
        context.close()
