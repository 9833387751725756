"""Live control of the temporal settings: config, OSC parameters through the live controller
(applied on the next tick, refused cleanly when the bank cannot take them), presets and morphs,
and a daemon started with a bank."""

from __future__ import annotations

import pytest

from bridge.config import DaemonConfig
from bridge.control.surface import ControlSurface, RecallPreset, SetParams
from bridge.live import LiveController
from bridge.params import NORMALIZABLE, PARAMS
from bridge.presets import ColdSettings, PresetStore, parse_preset_text
from bridge.prompt_cache import PromptCache

ADDRESSES = {
    "/sd/temporal/cache": "temporal_cache",
    "/sd/temporal/frames": "temporal_frames",
    "/sd/temporal/interval": "temporal_interval",
    "/sd/temporal/injection": "temporal_injection",
    "/sd/feedback": "latent_feedback",
}


def test_osc_addresses_and_normalized_faders():
    surface = ControlSurface()
    for address, name in ADDRESSES.items():
        assert PARAMS[name].address == address
        assert address in surface.addresses
    for address in ("/sd/norm/temporal/frames", "/sd/norm/temporal/interval", "/sd/norm/temporal/injection",
                    "/sd/norm/feedback"):
        assert address in NORMALIZABLE
    assert "/sd/norm/temporal/cache" not in NORMALIZABLE  # a toggle, not a fader


@pytest.mark.parametrize("data,match", [
    ({"params": {"temporal_cache": True}}, "max_frames is 0"),
    ({"params": {"temporal_injection": 0.3}}, "max_frames is 0"),
    ({"temporal": {"max_frames": 2}, "params": {"temporal_frames": 3}}, "more than temporal.max_frames"),
    ({"temporal": {"max_frames": 5}}, "max_frames"),
    ({"temporal": {"max_frames": 2, "size": 3}}, "size"),
    ({"params": {"latent_feedback": 0.95}}, "latent_feedback"),
])
def test_config_refuses_what_cannot_run(data, match):
    with pytest.raises(ValueError, match=match):
        DaemonConfig.model_validate(data)


def test_config_accepts_a_bank_and_feedback_without_one():
    cfg = DaemonConfig.model_validate({"temporal": {"max_frames": 3}, "params": {"temporal_frames": 2}})
    # the compiled runner captures / compiles its U-Net calls with the bank in place
    # every backend carries the bank: the compiled runner captures / compiles its U-Net calls with
    # it in place, the engine backends run U-Net graphs that take it as inputs
    for accel in ("compile", "onnxruntime", "tensorrt"):
        assert DaemonConfig.model_validate({"temporal": {"max_frames": 2},
                                            "pipeline": {"acceleration": accel}}).pipeline.acceleration == accel
    assert cfg.temporal.max_frames == 3 and cfg.params.temporal_frames == 2
    assert DaemonConfig.model_validate({"params": {"latent_feedback": 0.3}}).params.latent_feedback == 0.3


class Rig:
    def __init__(self, pipe, folder) -> None:
        (folder / "calm.yaml").write_text(
            "temporal_cache: true\ntemporal_frames: 1\ntemporal_injection: 0.8\nlatent_feedback: 0.6\n"
            "transition: 2.0\n")
        self.pipe = pipe
        self.errors: list[tuple[str, str]] = []
        self.echo: list[dict] = []
        self.now = 0.0
        cold = ColdSettings(model="tiny", vae=None, size=(64, 64), steps=3, frame_buffer=1, cfg="self",
                            acceleration="none")
        self.ctl = LiveController(pipe, PromptCache(lambda text: pipe.prompt_embeds), PresetStore(folder), cold,
                                  initial={"prompt": "a red fox", "negative_prompt": ""},
                                  feedback=self.echo.append, error=lambda a, r: self.errors.append((a, r)),
                                  clock=lambda: self.now)

    def send(self, **values) -> None:
        self.ctl.submit([SetParams(values)])
        self.ctl.tick(self.now)


def test_controller_applies_temporal_parameters_on_the_next_tick(make, tmp_path):
    pipe = make(temporal_max_frames=2)
    rig = Rig(pipe, tmp_path)
    rig.send(temporal_cache=False, temporal_frames=1, temporal_interval=3, temporal_injection=0.4,
             latent_feedback=0.2)
    bank = pipe.temporal
    assert (bank.cache, bank.frames, bank.interval, bank.injection, pipe.latent_feedback) == (False, 1, 3, 0.4, 0.2)
    assert rig.errors == []
    assert rig.echo[-1]["temporal_frames"] == 1 and rig.echo[-1]["latent_feedback"] == 0.2


def test_controller_refuses_more_frames_than_built_and_changes_nothing(make, tmp_path):
    pipe = make(temporal_max_frames=2)
    rig = Rig(pipe, tmp_path)
    rig.send(temporal_frames=2)
    rig.echo.clear()
    rig.send(temporal_frames=4, temporal_injection=0.5)
    assert rig.errors and rig.errors[0][0] == "/sd/temporal/frames" and "1..2" in rig.errors[0][1]
    assert pipe.temporal.frames == 2 and rig.ctl.values["temporal_frames"] == 2
    assert pipe.temporal.injection == 0.5  # the rest of the batch still applies
    assert "temporal_frames" not in rig.echo[-1]


def test_controller_without_a_bank_reports_and_keeps_feedback_working(make, tmp_path):
    pipe = make()
    rig = Rig(pipe, tmp_path)
    rig.send(temporal_cache=True, latent_feedback=0.3)
    assert [a for a, _ in rig.errors] == ["/sd/temporal/cache"]
    assert "max_frames" in rig.errors[0][1]
    assert rig.ctl.values["temporal_cache"] is False
    assert pipe.latent_feedback == 0.3


def test_preset_morphs_injection_and_feedback_and_cuts_the_switches(make, tmp_path):
    pipe = make(temporal_max_frames=2)
    rig = Rig(pipe, tmp_path)
    rig.ctl.notify_presets_changed({"calm": parse_preset_text((tmp_path / "calm.yaml").read_text())}, [], {})
    rig.ctl.tick(0.0)
    rig.ctl.submit([RecallPreset("calm")])
    rig.ctl.tick(0.0)
    assert pipe.temporal.frames == 1 and pipe.temporal.cache  # integers and switches cut
    rig.ctl.tick(1.0)
    assert pipe.temporal.injection == pytest.approx(0.4) and pipe.latent_feedback == pytest.approx(0.3)
    rig.ctl.tick(2.0)
    assert pipe.temporal.injection == pytest.approx(0.8) and pipe.latent_feedback == pytest.approx(0.6)
    assert rig.ctl.values["temporal_injection"] == pytest.approx(0.8)
    assert rig.errors == []


def test_daemon_builds_the_bank_and_reports_its_live_values(tiny_model_dir, tmp_path):
    from bridge.daemon import Daemon, DaemonOptions
    from tests.daemon.conftest import daemon_config, wait_until

    cfg = daemon_config(tiny_model_dir, tmp_path, 9, **{"temporal.max_frames": 3, "params.latent_feedback": 0.2})
    d = Daemon(cfg, DaemonOptions(osc=False, presets=False))
    d.start()
    try:
        assert wait_until(lambda: d.frames_rendered > 2, 30)
        pipe = d.engine.pipeline
        assert pipe.temporal is not None and pipe.temporal.max_frames == 3
        v = d.controller.values
        assert (v["temporal_cache"], v["temporal_frames"], v["latent_feedback"]) == (True, 3, 0.2)
        d.controller.submit([SetParams({"temporal_cache": False})])
        assert wait_until(lambda: not pipe.temporal.cache, 10)
    finally:
        d.stop()
