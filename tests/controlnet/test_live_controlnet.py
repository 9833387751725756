"""Live ControlNet parameters in the controller: applied on the next tick, multiplied by the loss
factor, canny thresholds handed to the edge workers, presets recalled (cold fields refused by
name) and morphed, saves that keep the ControlNets' values. The pipeline is the real one on the
``meta`` device; its ``set_controlnet`` calls are recorded."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
import torch
from diffusers import LCMScheduler

from bridge.control.surface import RecallPreset, SavePreset, SetParams
from bridge.live import LiveController
from bridge.params import live_params
from bridge.presets import ColdSettings, ControlNetCold, PresetStore, load_preset_file, source_key
from bridge.prompt_cache import PromptCache
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.tiny import SCHEDULER_CONFIG
from tests.core.devguard import ShapeRunner


def encode(text: str) -> torch.Tensor:
    return torch.randn((1, 77, 32), generator=torch.Generator().manual_seed(zlib.crc32(text.encode())))


class Recording:
    """The real pipeline, with every ``set_controlnet`` call recorded (and its state kept)."""

    def __init__(self, pipe: StreamPipeline, count: int) -> None:
        self._pipe = pipe
        self.calls: list[tuple[int, float | None, bool | None]] = []
        self.scales = [1.0] * count
        self.enabled = [True] * count

    def set_controlnet(self, index: int, *, scale: float | None = None, enabled: bool | None = None) -> None:
        if not 0 <= index < len(self.scales):
            raise ValueError(f"no ControlNet {index}")
        self.calls.append((index, scale, enabled))
        if scale is not None:
            self.scales[index] = scale
        if enabled is not None:
            self.enabled[index] = enabled

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


PRESETS = {
    "soft": "prompt: a red fox\ncontrolnets:\n  - scale: 0.2\n  - canny: {low: 11, high: 22}\n",
    "glide": "prompt: a red fox\ntransition: 1.0\ncontrolnets:\n  - scale: 1.8\n  - scale: 0.0\n    enabled: false\n",
    "other-model": "controlnets:\n  - model: someone/else\n    scale: 0.1\n",
    "other-source": "controlnets:\n  - {}\n  - source: 'ndi:Depth'\n",
}


class Rig:
    def __init__(self, folder) -> None:
        for name, text in PRESETS.items():
            (folder / f"{name}.yaml").write_text(text)
        settings = StreamSettings(width=64, height=64, t_index_list=(32, 45), seed=2)
        pipe = StreamPipeline(ShapeRunner(), LCMScheduler.from_config(SCHEDULER_CONFIG), settings,
                              encode("a red fox"), encode(""))
        self.pipe = Recording(pipe, 2)
        self.cache = PromptCache(encode)
        self.store = PresetStore(folder)
        cold = ColdSettings(model="tiny", vae=None, size=(64, 64), steps=2, frame_buffer=1, cfg="self",
                            acceleration="none", controlnets=(ControlNetCold("cn/depth", "none", "input"),
                                                              ControlNetCold("cn/canny", "canny", "input")))
        self.errors: list[tuple[str, str]] = []
        self.changes: list[dict[str, Any]] = []
        self.canny: list[tuple[int, float, float]] = []
        self.now = 0.0
        self.ctl = LiveController(
            self.pipe, self.cache, self.store, cold, clock=lambda: self.now,
            params=live_params(["none", "canny"]),
            initial={"prompt": "a red fox", "negative_prompt": "", "controlnet_0_scale": 0.8},
            error=lambda a, r: self.errors.append((a, r)), feedback=self.changes.append,
            on_canny=lambda i, lo, hi: self.canny.append((i, lo, hi)),
        )
        assert self.ctl.prewarm(["a red fox", ""]).wait(10)

    def tick(self, dt: float = 0.0) -> None:
        self.now += dt
        self.ctl.tick()

    def close(self) -> None:
        self.ctl.close()
        self.store.stop()
        self.cache.stop()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def test_initial_values_reach_the_pipeline(rig: Rig) -> None:
    assert rig.pipe.scales == [0.8, 1.0] and rig.pipe.enabled == [True, True]


def test_scale_and_enabled_apply_on_the_next_tick(rig: Rig) -> None:
    rig.pipe.calls.clear()
    rig.ctl.submit([SetParams({"controlnet_1_scale": 1.5, "controlnet_0_enabled": False})])
    assert rig.pipe.calls == []  # nothing before the render loop's tick
    rig.tick()
    assert rig.pipe.scales == [0.8, 1.5] and rig.pipe.enabled == [False, True]
    assert {"controlnet_1_scale": 1.5, "controlnet_0_enabled": False}.items() <= rig.changes[-1].items()
    rig.pipe.calls.clear()
    rig.ctl.submit([SetParams({"controlnet_1_scale": 1.5})])  # unchanged: no call
    rig.tick()
    assert rig.pipe.calls == []


def test_the_loss_factor_multiplies_the_live_scale(rig: Rig) -> None:
    rig.ctl.set_controlnet_gains([0.5, 1.0])
    assert rig.pipe.scales == [0.4, 1.0]
    rig.ctl.submit([SetParams({"controlnet_0_scale": 2.0})])
    rig.tick()
    assert rig.pipe.scales == [1.0, 1.0]
    assert rig.ctl.values["controlnet_0_scale"] == 2.0  # the live value (and its echo) is the user's
    rig.ctl.set_controlnet_gains([0.0, 1.0])
    assert rig.pipe.scales == [0.0, 1.0]
    n = len(rig.pipe.calls)
    rig.ctl.set_controlnet_gains([0.0, 1.0])
    assert len(rig.pipe.calls) == n  # same factors: no call


def test_canny_thresholds_go_to_the_edge_workers(rig: Rig) -> None:
    rig.ctl.submit([SetParams({"controlnet_1_canny_low": 42.0})])
    rig.tick()
    assert rig.canny == [(1, 42.0, 200.0)]


def test_preset_recall_cuts_without_a_transition(rig: Rig) -> None:
    rig.ctl.submit([RecallPreset("soft")])
    rig.tick()
    assert rig.errors == []
    assert rig.pipe.scales[0] == pytest.approx(0.2)
    assert rig.canny[-1] == (1, 11.0, 22.0)
    assert rig.ctl.values["controlnet_0_scale"] == 0.2


def test_preset_transition_morphs_the_scales(rig: Rig) -> None:
    rig.ctl.submit([RecallPreset("glide")])
    rig.tick()
    assert rig.pipe.enabled[1] is False  # a switch cuts at once
    rig.tick(0.5)
    assert rig.pipe.scales == [pytest.approx(1.3), pytest.approx(0.5)]  # half way: 0.8 -> 1.8, 1.0 -> 0
    assert rig.ctl.values["controlnet_0_scale"] == 0.8  # the live value changes when the morph ends
    rig.tick(0.6)
    assert rig.pipe.scales == [pytest.approx(1.8), 0.0]
    assert rig.ctl.values["controlnet_0_scale"] == pytest.approx(1.8)
    assert any(c.get("controlnet_0_scale") == pytest.approx(1.8) for c in rig.changes)
    assert rig.errors == []


def test_a_fader_moved_during_a_morph_takes_that_scale_over(rig: Rig) -> None:
    rig.ctl.submit([RecallPreset("glide")])
    rig.tick()
    rig.tick(0.25)
    rig.ctl.submit([SetParams({"controlnet_0_scale": 0.1})])
    rig.tick(0.25)
    assert rig.pipe.scales[0] == pytest.approx(0.1)
    rig.tick(1.0)
    assert rig.pipe.scales[0] == pytest.approx(0.1) and rig.ctl.values["controlnet_0_scale"] == 0.1


@pytest.mark.parametrize(("name", "words"), [
    ("other-model", "controlnets.0.model: preset wants someone/else, the pipeline runs cn/depth"),
    ("other-source", "controlnets.1.source: preset wants ndi:Depth, the pipeline runs input"),
])
def test_a_preset_touching_a_cold_field_is_refused_by_name(rig: Rig, name: str, words: str) -> None:
    before = list(rig.pipe.scales)
    rig.ctl.submit([RecallPreset(name)])
    rig.tick()
    assert len(rig.errors) == 1 and words in rig.errors[0][1], rig.errors
    assert rig.pipe.scales == before and rig.ctl.current_preset is None


def test_save_keeps_the_controlnet_values(rig: Rig, tmp_path) -> None:
    rig.ctl.submit([SetParams({"controlnet_0_scale": 1.25, "controlnet_1_enabled": False,
                               "controlnet_1_canny_high": 150.0})])
    rig.tick()
    rig.ctl.submit([SavePreset("mine")])
    rig.tick()
    rig.ctl.saver.close()
    saved = load_preset_file(tmp_path / "mine.yaml")
    assert saved.controlnet_values() == {"controlnet_0_scale": 1.25, "controlnet_0_enabled": True,
                                         "controlnet_1_scale": 1.0, "controlnet_1_enabled": False,
                                         "controlnet_1_canny_low": 100.0, "controlnet_1_canny_high": 150.0}
    assert saved.controlnets[0].model is None  # hot values only: recall anywhere with two ControlNets
    # no temporal bank here: its settings are defaults, not state, and are not written (a recall
    # on a daemon with a bank would otherwise switch its cache off)
    text = (tmp_path / "mine.yaml").read_text()
    assert "temporal_cache" not in text and "temporal_frames" not in text and "latent_feedback" in text


def test_source_key_compares_specs_by_meaning() -> None:
    assert source_key("ndi:TD Depth") == source_key({"type": "ndi", "name": "TD Depth"})
    assert source_key("input") == "input" and source_key("INPUT") == "input"
