"""A running daemon whose model runner hangs, raises, returns NaN or is slow: the output keeps its
rate, falls back while the render is stalled, bypass works while it is hung, NaN never goes out."""

from __future__ import annotations

import time

import pytest

from bridge.control.surface import SetParams
from bridge.daemon import Daemon, DaemonOptions
from tests.daemon.conftest import daemon_config, wait_until
from tests.daemon.faults import FaultRunner


@pytest.fixture(scope="module")
def faulty(tiny_model_dir, preset_dir, feedback):
    cfg = daemon_config(tiny_model_dir, preset_dir, feedback.port,
                        **{"output.on_stall": "black", "output.watchdog_ms": 1000})
    d = Daemon(cfg, DaemonOptions(osc=False, presets=False))
    d.start()
    runner = FaultRunner(d.engine.pipeline.runner)
    d.engine.pipeline.runner = runner
    assert wait_until(lambda: d.publisher.showing == "frame" and runner.calls > 2, 20)
    yield d, runner
    runner.release.set()
    d.stop()


def _published(d: Daemon) -> int:
    return d.metrics.counter("published")


def test_hang_then_bypass_then_recovery(faulty, feedback):
    d, runner = faulty
    feedback.clear()
    runner.release.clear()
    runner.mode = "hang"
    assert runner.hanging.wait(5)
    assert wait_until(lambda: d.publisher.render_state == "stalled", 3)
    assert d.status()["render"] == "stalled" and d.page_status()["render"] == "stalled"
    assert wait_until(lambda: d.publisher.showing == "black", 1)  # on_stall: black
    feedback.wait_for("/sd/status/render", lambda a: a[0] == "stalled")
    p0 = _published(d)
    time.sleep(0.5)
    assert _published(d) - p0 >= 10  # ~15 at 30 fps: the clock keeps ticking

    d.submit([SetParams({"bypass": True})])  # the render thread is still stuck in decode
    assert wait_until(lambda: d.publisher.showing == "input", 1)
    seq0 = d.publisher._input.seq
    assert wait_until(lambda: d.publisher._input.seq > seq0 + 3, 2)  # live input, not a frozen frame
    d.submit([SetParams({"bypass": False})])

    runner.mode = "ok"
    runner.release.set()
    assert wait_until(lambda: d.publisher.render_state == "ok" and d.publisher.showing == "frame", 5)
    feedback.wait_for("/sd/status/render", lambda a: a[0] == "ok")


def test_nan_never_reaches_the_output_and_is_reported(faulty, feedback):
    d, runner = faulty
    feedback.clear()
    nan0 = d.render.nonfinite_outputs
    runner.mode = "nan"
    assert wait_until(lambda: d.render.nonfinite_outputs > nan0, 5)  # (a call already past decode is done)
    put0, nan1 = d.frames_out.counters()["put"], d.render.nonfinite_outputs
    assert wait_until(lambda: d.render.nonfinite_outputs >= nan1 + 3, 5)
    assert d.frames_out.counters()["put"] == put0  # no frame from a NaN output was handed on
    feedback.wait_for("/sd/error", lambda a: a[0] == "/sd/render" and "non-finite" in a[1])
    assert d.page_status()["nonfinite_outputs"] >= 3
    runner.mode = "ok"
    assert wait_until(lambda: d.frames_out.counters()["put"] > put0 + 2, 5)


def test_exceptions_keep_the_output_going(faulty):
    d, runner = faulty
    errors0, p0 = d.render_errors, _published(d)
    runner.mode = "raise"
    assert wait_until(lambda: d.render_errors >= errors0 + 3, 5)
    assert _published(d) > p0
    runner.mode = "ok"
    rendered = d.frames_rendered
    assert wait_until(lambda: d.frames_rendered > rendered + 2, 5)


def test_slow_frames_are_not_a_stall(faulty, feedback):
    d, runner = faulty
    feedback.clear()
    runner.slow_s = 0.3  # ~3 frames/s: slow, but well under the 1 s watchdog
    runner.mode = "slow"
    calls = runner.calls
    time.sleep(2.0)
    runner.mode = "ok"
    assert runner.calls > calls + 2
    assert d.publisher.render_state == "ok"
    assert ("stalled",) not in feedback.values("/sd/status/render")
    assert ("ok",) in feedback.values("/sd/status/render")  # the periodic status says so


def test_the_stream_is_reset_when_the_source_is_live_again(faulty):
    d, _ = faulty
    resets = d.render.resets
    health = d.source_worker.health
    with d.source_worker._health_lock:  # as the watchdog would: a stall, then frames resume
        health._set("stalled", "no new frame (test)")
        health._set("live", "frames resumed")
    assert wait_until(lambda: d.render.resets == resets + 1, 2)
    rendered = d.frames_rendered
    assert wait_until(lambda: d.frames_rendered > rendered + 2, 5)
