"""A daemon whose video source cannot be opened says why: `status()` (and so the status page and
OSCQuery), `/sd/status/source_error`, and one WARNING however often it retries."""

from __future__ import annotations

import logging

from bridge.daemon import Daemon, DaemonOptions
from bridge.io.registry import parse_source_config
from tests.daemon.conftest import FeedbackListener, daemon_config, wait_until


def test_unopenable_video_is_an_error_with_its_reason(tiny_model_dir, tmp_path, caplog):
    clip = tmp_path / "broken.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 4000)  # a header and nothing else
    fb = FeedbackListener()
    cfg = daemon_config(tiny_model_dir, tmp_path, fb.port)
    cfg = cfg.model_copy(update={"source": parse_source_config({"type": "video", "path": str(clip)})})
    caplog.set_level(logging.INFO)
    d = Daemon(cfg, DaemonOptions(presets=False))
    try:
        d.start()
        assert wait_until(lambda: d.status()["source"] == "error", 10), d.status()
        reason = d.status()["source_error"]
        assert "broken.mp4" in reason and "cannot open video file" in reason
        assert d.page_status()["source_error"] == reason
        fb.wait_for("/sd/status/source_error", lambda a: "broken.mp4" in a[0])
        fb.wait_for("/sd/status/source", lambda a: a[0] == "error")
        # retries every 0.25 s, then 0.5, 1: several attempts, still one warning
        assert wait_until(lambda: d.source_worker.health.failed_attempts >= 3, 10)
    finally:
        d.stop()
        fb.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "cannot deliver" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_backend_that_cannot_run_here_is_a_startup_error(tiny_model_dir, tmp_path):
    import sys
    import time

    import pytest

    from bridge.daemon import StartupError
    from bridge.io.registry import parse_sink_config

    if sys.platform in ("win32", "darwin"):
        pytest.skip("Spout/Syphon exist here")
    cfg = daemon_config(tiny_model_dir, tmp_path, 9)
    cfg = cfg.model_copy(update={"source": parse_source_config({"type": "spout", "name": "TD"}),
                                 "sinks": [parse_sink_config({"type": "syphon"})]})
    d = Daemon(cfg, DaemonOptions(presets=False, osc=False))
    t0 = time.monotonic()
    with pytest.raises(StartupError) as exc:
        d.start()
    d.stop()
    assert "source.type: Spout sources exist only on Windows" in str(exc.value)
    assert "sinks.0.type: Syphon sinks exist only on macOS" in str(exc.value)
    assert d.engine is None and time.monotonic() - t0 < 2.0  # before the model loads
