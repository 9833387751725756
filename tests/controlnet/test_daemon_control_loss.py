"""A second control source lost and back, in the running daemon (tiny model and ControlNets, real
NDI over loopback for the control stream, pattern input): the output keeps rendering, one
ControlNet fades to scale 0 and back, the other holds its last control frame at full scale, and
the states go out as /sd/status/control/<i>/... over real UDP."""

from __future__ import annotations

import time
import uuid

import pytest

from bridge.config import DaemonConfig
from bridge.daemon import Daemon, DaemonOptions
from tests.daemon.conftest import daemon_config, wait_until

pytest.importorskip("NDIlib", reason="ndi-python is not installed (pip install streambridge[ndi])")

from tests.daemon.test_ndi_e2e import RawSender


def test_control_source_loss_fades_or_holds_and_never_stops_the_output(
        tiny_model_dir, tiny_controlnet_dir, tiny_controlnet_b_dir, feedback, tmp_path) -> None:
    name = f"sbdepth-{uuid.uuid4().hex[:8]}"
    source = {"type": "ndi", "name": name, "discovery_timeout": 2.0}
    cfg = daemon_config(tiny_model_dir, tmp_path, feedback.port).model_dump()
    cfg["pipeline"]["steps"] = [32, 45]
    cfg["controlnets"] = [
        {"model": str(tiny_controlnet_dir), "scale": 0.9, "source": source, "on_loss": "fade", "fade_s": 0.3},
        {"model": str(tiny_controlnet_b_dir), "scale": 0.7, "source": source, "on_loss": "hold"},
    ]
    sender = RawSender(name)
    sender.start()
    d = Daemon(DaemonConfig.model_validate(cfg), DaemonOptions(prewarm_timeout=0))
    d.start()
    pipe = d.engine.pipeline
    try:
        assert wait_until(lambda: pipe.controlnet_scales == (0.9, 0.7), 20), (pipe.controlnet_scales,
                                                                              d.controlnets.details())
        feedback.wait_for("/sd/status/control/0/state", lambda a: a[0] == "live")

        feedback.clear()
        sender.stop()
        rendered = d.frames_rendered
        feedback.wait_for("/sd/status/control/0/state", lambda a: a[0] in ("lost", "reconnecting"))
        assert wait_until(lambda: pipe.controlnet_scales == (0.0, 0.7), 3), pipe.controlnet_scales
        feedback.wait_for("/sd/status/control/1/holding", lambda a: a[0] == 1)
        feedback.wait_for("/sd/status/control/0/gain", lambda a: a[0] == 0.0)
        time.sleep(0.3)
        assert d.frames_rendered > rendered + 3  # the output never waits for the control stream
        assert d.status()["source"] == "live" and d.render_errors == 0
        assert d.controller.values["controlnet_0_scale"] == 0.9  # the live value is the user's

        sender = RawSender(name)
        sender.start()
        assert wait_until(lambda: pipe.controlnet_scales == (0.9, 0.7), 20), d.controlnets.details()
        feedback.wait_for("/sd/status/control/0/state", lambda a: a[0] == "live")
        assert d.status()["control/1/holding"] == 0
    finally:
        sender.stop()
        d.stop()
    assert not any(name.startswith("source-control") for name in d.abandoned)
