"""ControlNets in the running daemon (tiny model, tiny random ControlNets, pattern sources, real
OSC over loopback UDP): a scale sent over OSC reaches the pipeline before the next frame and is
echoed; bad indices and values are refused; the control source is reported; presets morph."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pythonosc.udp_client import SimpleUDPClient

from bridge.daemon import Daemon, DaemonOptions
from tests.daemon.conftest import daemon_config, wait_until


@pytest.fixture(scope="module")
def cn_daemon(tiny_model_dir, tiny_controlnet_dir, tiny_controlnet_b_dir, feedback, tmp_path_factory):
    presets = tmp_path_factory.mktemp("cn-presets")
    (presets / "glide.yaml").write_text("transition: 0.6\ncontrolnets:\n  - scale: 0.2\n  - {}\n")
    (presets / "other.yaml").write_text("controlnets:\n  - preprocessor: none\n")
    cfg = daemon_config(tiny_model_dir, presets, feedback.port).model_dump()
    cfg["pipeline"]["steps"] = [32, 45]
    cfg["controlnets"] = [
        {"model": str(tiny_controlnet_dir), "scale": 0.5, "preprocessor": "canny", "canny": {"low": 20, "high": 60}},
        {"model": str(tiny_controlnet_b_dir), "scale": 0.7, "source": "pattern:96x64@30", "on_loss": "hold"},
    ]
    from bridge.config import DaemonConfig

    d = Daemon(DaemonConfig.model_validate(cfg), DaemonOptions(prewarm_timeout=30))
    d.start()
    # every stream call, with the scales the pipeline holds when it starts
    calls: list[tuple[float, tuple[float, ...]]] = []
    process = d.engine.process

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append((time.monotonic(), tuple(d.engine.pipeline.controlnet_scales)))
        assert len(kwargs["control"]) == 2
        return process(*args, **kwargs)

    d.engine.process = spy
    d.calls = calls  # type: ignore[attr-defined]
    assert wait_until(lambda: d.frames_rendered > 3, 30), "the daemon renders no frames"
    yield d
    d.stop()


@pytest.fixture(scope="module")
def client(cn_daemon):
    return SimpleUDPClient(*cn_daemon.osc.address)


def test_scale_over_osc_applies_before_the_next_frame_and_is_echoed(cn_daemon, client, feedback) -> None:
    pipe = cn_daemon.engine.pipeline
    assert pipe.controlnet_scales == (0.5, 0.7)  # the config's, the second source live (factor 1)
    feedback.clear()
    client.send_message("/sd/controlnet/0/scale", 1.5)
    feedback.wait_for("/sd/controlnet/0/scale", lambda a: a[0] == pytest.approx(1.5))
    t_echo = time.monotonic()
    feedback.wait_for("/sd/norm/controlnet/0/scale", lambda a: a[0] == pytest.approx(0.75))
    assert wait_until(lambda: any(t > t_echo for t, _ in cn_daemon.calls), 10)
    # the echo goes out once the render loop applied it: every call after it has the new scale
    after = [scales for t, scales in cn_daemon.calls if t > t_echo]
    assert after and all(s[0] == pytest.approx(1.5) for s in after)
    client.send_message("/sd/controlnet/1/enabled", 0)
    assert wait_until(lambda: pipe.controlnet_enabled == (True, False))
    client.send_message("/sd/controlnet/1/enabled", 1)
    client.send_message("/sd/controlnet/0/canny/low", 5.0)
    assert wait_until(lambda: cn_daemon.controlnets.thresholds.get(0) == (5.0, 60.0))
    assert wait_until(lambda: pipe.controlnet_enabled == (True, True))
    assert cn_daemon.render_errors == 0


def test_bad_index_or_value_is_refused_and_changes_nothing(cn_daemon, client, feedback) -> None:
    pipe = cn_daemon.engine.pipeline
    before = pipe.controlnet_scales
    feedback.clear()
    client.send_message("/sd/controlnet/2/scale", 1.0)
    err = feedback.wait_for("/sd/error", lambda a: a[0] == "/sd/controlnet/2/scale")
    assert "no ControlNet '2' (configured: 0, 1)" in err[1]
    client.send_message("/sd/controlnet/0/scale", 9.0)
    err = feedback.wait_for("/sd/error", lambda a: a[0] == "/sd/controlnet/0/scale")
    assert "outside 0..2" in err[1]
    client.send_message("/sd/controlnet/1/canny/high", 10.0)
    err = feedback.wait_for("/sd/error", lambda a: a[0] == "/sd/controlnet/1/canny/high")
    assert "no canny thresholds" in err[1]
    time.sleep(0.2)
    assert pipe.controlnet_scales == before


def test_control_sources_are_reported(cn_daemon, feedback) -> None:
    feedback.wait_for("/sd/status/control/1/state", lambda a: a[0] == "live")
    feedback.wait_for("/sd/status/control/0/state", lambda a: a[0] == "input")
    status = cn_daemon.status()
    assert status["control/1/gain"] == 1.0 and status["control/1/holding"] == 0
    rows = cn_daemon.page_status()["controlnets"]
    assert rows[0]["source"] == "input" and rows[1]["state"] == "live" and rows[1]["frames"] > 0
    # canny on the input ran on the input source's worker thread, the second source on its own
    names = {t.name for t in threading.enumerate()}
    assert "source-control1:pattern" in names and "source-source:pattern" in names


def test_preset_recall_morphs_the_scale_and_a_cold_field_is_refused(cn_daemon, client, feedback) -> None:
    pipe = cn_daemon.engine.pipeline
    client.send_message("/sd/controlnet/0/scale", 1.0)
    assert wait_until(lambda: pipe.controlnet_scales[0] == pytest.approx(1.0))
    feedback.clear()
    client.send_message("/sd/preset", "other")
    err = feedback.wait_for("/sd/error", lambda a: a[0] == "/sd/preset")
    assert "controlnets.0.preprocessor: preset wants none, the pipeline runs canny" in err[1]
    seen: list[float] = []
    client.send_message("/sd/preset", "glide")
    assert wait_until(lambda: seen.append(pipe.controlnet_scales[0]) or pipe.controlnet_scales[0] == pytest.approx(0.2), 10)
    assert any(0.2 < s < 1.0 for s in seen), seen  # it passed through the values in between
    feedback.wait_for("/sd/controlnet/0/scale", lambda a: a[0] == pytest.approx(0.2))
    assert pipe.controlnet_scales[1] == pytest.approx(0.7)  # the empty entry left it alone
