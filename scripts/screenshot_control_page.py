"""Take the screenshots of the control page shown in the README (docs/img/).

Runs the real daemon in-process (the test pattern through a tiny random model generated offline,
control page on a free local port), opens the control page in headless Chromium (the system's
`chromium`, driven by Playwright; nothing is downloaded), lets the plots fill for a while, recalls
a preset and moves two faders over the page's own API, and saves a desktop and a phone view.

    python scripts/screenshot_control_page.py            # -> docs/img/control-page*.png
    python scripts/screenshot_control_page.py --out /tmp/shots --seconds 5

Needs `apt-get install chromium` (or --chromium PATH) and `pip install -e ".[test]"`.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img", help="folder for the PNGs")
    parser.add_argument("--seconds", type=float, default=20.0, help="let the plots fill this long first")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not Path(args.chromium).exists():
        print(f"no Chromium at {args.chromium}: apt-get install -y chromium (or --chromium PATH)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    from bridge.config import DaemonConfig
    from bridge.daemon import Daemon, DaemonOptions
    from stream_core.tiny import make_tiny_model

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sb-shot-") as tmp:
        work = Path(tmp)
        presets = work / "presets"
        shutil.copytree(REPO / "presets", presets)
        cfg = DaemonConfig.model_validate({
            "model": {"model": str(make_tiny_model(work / "tiny")), "device": "cpu", "dtype": "float32"},
            "pipeline": {"size": [128, 128], "steps": [32, 45], "cfg": "self"},
            "source": {"type": "pattern", "width": 160, "height": 128, "fps": 15},
            "sinks": [{"type": "null"}],
            "output": {"fps": 15},
            "osc": {"listen": "127.0.0.1:0"},
            "status": {"listen": "127.0.0.1:0", "control": True},
            "presets": {"folder": str(presets)},
            "params": {"mix": 0.5},  # the tiny model's output is noise: show the pattern through it
        })
        daemon = Daemon(cfg, DaemonOptions(prewarm_timeout=30))
        daemon.start()
        try:
            url = daemon.status_page.url + "control"
            with sync_playwright() as pw:
                context = pw.chromium.launch_persistent_context(
                    str(work / "profile"), executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS,
                    viewport={"width": 1280, "height": 900})
                page = context.new_page()
                page.goto(url)
                page.wait_for_selector("body[data-ready='1']", timeout=30_000)
                page.locator("#preset-grid button[data-preset='neon-city']").click()
                time.sleep(max(0.0, args.seconds - 4))
                for address, value in (("/sd/strength", 0.62), ("/sd/seed/mix", 0.35)):
                    page.request.post(daemon.status_page.url + "api/osc", data={"address": address, "args": [value]},
                                      headers={"Content-Type": "application/json"})
                time.sleep(4)
                page.screenshot(path=str(args.out / "control-page.png"), full_page=True)
                phone = context.new_page()
                phone.set_viewport_size({"width": 390, "height": 844})
                phone.goto(url)
                phone.wait_for_selector("body[data-ready='1']", timeout=30_000)
                time.sleep(2)
                phone.screenshot(path=str(args.out / "control-page-phone.png"))
                context.close()
        finally:
            daemon.stop()
    print(f"wrote {args.out / 'control-page.png'} and {args.out / 'control-page-phone.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
