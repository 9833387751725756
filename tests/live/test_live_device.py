"""Live control keeps every tensor on the pipeline's device and dtype, and a failing control
tick ends what it belongs to with one report. The pipeline runs on the ``meta`` device in float16
and the prompt encoder hands over CPU float32 embeddings (as a text encoder elsewhere would): a
CPU/device mix-up fails here as it does on CUDA, without a GPU."""

from __future__ import annotations

import logging
import zlib

import pytest
import torch
from diffusers import LCMScheduler

from bridge.control.surface import RecallPreset, SetParams
from bridge.live import LiveController
from bridge.presets import ColdSettings, PresetStore
from bridge.prompt_cache import PromptCache
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.schedule import strength_to_t_index_list
from stream_core.tiny import SCHEDULER_CONFIG
from tests.core.devguard import DeviceGuard, ShapeRunner

SIZE = 64


def encode(text: str) -> torch.Tensor:
    return torch.randn((1, 77, 32), generator=torch.Generator().manual_seed(zlib.crc32(text.encode())))


PRESETS = {
    "dawn": "prompt: a quiet beach at dawn\nnegative_prompt: blurry\nseed: 5\nstrength: 0.3\nguidance: 1.2\n",
    "night": (
        "prompt: a burning city at night\nnegative_prompt: dull\nseed: 9\nseed_b: 12\nseed_mix: 0.4\n"
        "strength: 0.8\nguidance: 2.0\ndelta: 0.6\nsmoothing: 0.5\ntransition: 1.0\n"
    ),
    "ab": (
        "prompt_a: red apples\nprompt_b: green pears\nprompt_mix: 0.7\nseed: 21\nsmoothing: 0.2\n"
        "transition: 0.5\n"
    ),
}


class Rig:
    def __init__(self, folder, cfg: str = "self") -> None:
        for name, text in PRESETS.items():
            (folder / f"{name}.yaml").write_text(text)
        self.folder = folder
        settings = StreamSettings(width=SIZE, height=SIZE, t_index_list=(32, 45), cfg_type=cfg, seed=2)
        self.pipe = StreamPipeline(ShapeRunner(), LCMScheduler.from_config(SCHEDULER_CONFIG), settings,
                                   encode("a red fox"), encode(""))
        self.cache = PromptCache(encode)
        self.store = PresetStore(folder)
        cold = ColdSettings(model="tiny", vae=None, size=(SIZE, SIZE), steps=2, frame_buffer=1, cfg=cfg,
                            acceleration="none")
        self.errors: list[tuple[str, str]] = []
        self.now = 0.0
        self.ctl = LiveController(self.pipe, self.cache, self.store, cold,
                                  initial={"prompt": "a red fox", "negative_prompt": ""},
                                  error=lambda a, r: self.errors.append((a, r)), clock=lambda: self.now)
        assert self.ctl.prewarm(["a red fox", ""]).wait(10)
        assert self.ctl.prewarm().wait(10)
        self.guard = DeviceGuard()

    def run(self, seconds: float, fps: float = 20.0) -> None:
        """Ticks and frames on a manual clock, all under the guard."""
        frame = torch.empty((1, 3, SIZE, SIZE), device="meta", dtype=torch.float16)
        with self.guard:
            for _ in range(round(seconds * fps)):
                self.now += 1.0 / fps
                self.ctl.tick()
                self.pipe(frame)

    def check(self) -> None:
        assert self.guard.violations == []
        assert self.pipe.runner.problems == []
        assert self.errors == []
        for t in (self.pipe.noise, self.pipe.prompt_embeds, self.pipe.negative_prompt_embeds, self.pipe._text_batch):
            assert (t.device.type, t.dtype) == ("meta", torch.float16)

    def close(self) -> None:
        self.ctl.close()
        self.cache.stop()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def test_recall_with_a_transition_morphs_on_the_device(rig):
    rig.run(0.2)
    rig.ctl.submit([RecallPreset("night")])
    rig.run(0.5)
    assert rig.ctl._morph is not None  # mid-transition: noise, embeddings, strength, smoothing move
    rig.run(0.8)
    assert rig.ctl._morph is None
    v = rig.ctl.values
    assert (v["seed"], v["seed_b"], v["seed_mix"], v["prompt"]) == (9, 12, 0.4, "a burning city at night")
    assert (rig.pipe.seed, rig.pipe.seed_b, rig.pipe.seed_mix) == (9, 12, 0.4)
    assert rig.pipe.smoothing == pytest.approx(0.5)
    rig.check()


def test_seed_crossfade_on_the_device_draws_each_seed_once(rig):
    rig.ctl.submit([SetParams({"seed": 11, "seed_b": 77, "seed_mix": 0.05})])
    rig.run(0.1)
    uploads = rig.guard.uploads
    for mix in (0.1, 0.35, 0.6, 0.9, 1.0, 0.5):
        rig.ctl.submit([SetParams({"seed_mix": mix})])
        rig.run(0.05)
    assert rig.pipe.seed_mix == 0.5
    assert rig.guard.uploads == uploads  # the fader moves without drawing or uploading noise again
    rig.check()


def test_prompt_crossfade_on_the_device(rig):
    for text in ("a red apple", "a green pear"):
        rig.cache.request(text)
    assert rig.ctl.prewarm(["a red apple", "a green pear"]).wait(10)
    rig.ctl.submit([SetParams({"prompt_a": "a red apple", "prompt_b": "a green pear", "prompt_mix": 0.3})])
    rig.run(0.1)
    for mix in (0.5, 0.8):
        rig.ctl.submit([SetParams({"prompt_mix": mix})])
        rig.run(0.05)
    assert rig.ctl._conditioning_dirty is False
    rig.check()


def test_smoothing_and_a_crossfader_preset_morph_on_the_device(rig):
    rig.ctl.submit([SetParams({"smoothing": 0.4})])
    rig.run(0.1)
    assert rig.pipe.smoothing == pytest.approx(0.4)
    rig.ctl.submit([RecallPreset("ab")])
    rig.run(0.8)
    assert rig.ctl._morph is None and rig.pipe.smoothing == pytest.approx(0.2)
    assert rig.ctl.values["prompt_mix"] == 0.7
    rig.check()


def test_hot_reloaded_preset_recalls_with_a_transition_on_the_device(rig):
    (rig.folder / "storm.yaml").write_text("prompt: a storm at sea\nseed: 31\nguidance: 1.8\ntransition: 0.5\n")
    changes = rig.store.reload()
    assert "storm" in changes.changed
    rig.ctl.notify_presets_changed(*changes)
    rig.run(0.1)
    assert rig.cache.prewarm(["a storm at sea"]).wait(10)
    rig.ctl.submit([RecallPreset("storm")])
    rig.run(0.8)
    assert rig.ctl.current_preset == "storm" and rig.ctl._morph is None
    assert rig.pipe.seed == 31
    rig.check()


def test_a_failing_transition_ends_with_one_error_and_one_log_line(rig, caplog, monkeypatch):
    rig.run(0.1)
    rig.ctl.submit([RecallPreset("night")])
    rig.run(0.1)
    assert rig.ctl._morph is not None

    def broken(value):
        raise RuntimeError("Expected all tensors to be on the same device, cuda:0 and cpu")

    monkeypatch.setattr(rig.pipe, "set_guidance_scale", broken)
    with caplog.at_level(logging.INFO, logger="streambridge.live"):
        rig.run(1.5)  # 30 ticks: the failure must not repeat
    assert rig.ctl._morph is None and not rig.pipe.morphing_noise and not rig.pipe.morphing_conditioning
    assert len(rig.errors) == 1
    address, reason = rig.errors[0]
    assert address == "/sd/preset" and "night" in reason and "same device" in reason
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    # the pipeline is back on the live values, which never left the start of the transition
    v = rig.ctl.values
    assert (v["seed"], v["seed_mix"]) == (2, 0.0)
    assert rig.pipe.noise is rig.pipe.noise_for_seed(2)
    assert rig.pipe.t_index_list == strength_to_t_index_list(v["strength"], 2)
    assert rig.pipe.smoothing == v["smoothing"]
    # the controller keeps working: a later recall still applies
    monkeypatch.undo()
    rig.errors.clear()
    rig.ctl.submit([RecallPreset("dawn")])  # the night preset's transition (1 s) was applied
    rig.run(1.2)
    assert rig.ctl.current_preset == "dawn" and rig.pipe.seed == 5 and rig.pipe.guidance_scale == 1.2
    rig.check()
