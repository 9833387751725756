"""A live controller on a manual clock, driving a real StreamPipeline on the ``meta`` device in
float16 under the device guard (as tests/live does): tempo features are checked frame by frame,
and a CPU/device mix-up in them fails here as it would on CUDA."""

from __future__ import annotations

import time
import zlib
from typing import Any

import torch
from diffusers import LCMScheduler

from bridge.live import LiveController
from bridge.presets import ColdSettings, PresetStore
from bridge.prompt_cache import PromptCache
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.tiny import SCHEDULER_CONFIG
from tests.core.devguard import DeviceGuard, ShapeRunner

SIZE = 64
FPS = 30.0

PRESETS = {
    "cut": "prompt: a red fox\nguidance: 3.0\nstrength: 0.7\nseed: 4\ntransition: 0\n",
    "morph": "prompt: a red fox\nguidance: 5.0\ntransition_beats: 2\n",
    "secs": "prompt: a red fox\nguidance: 4.0\ntransition: 0.5\n",
    "wobble": (
        "prompt: a red fox\nguidance: 2.0\ntransition: 0\nlfos:\n"
        "  guidance: {shape: square, rate: 1, depth: 0.5}\n"
        "  strength: {shape: saw, rate: 2, sync: false, depth_norm: 0.25, phase: 0.5}\n"
    ),
    "still": "prompt: a red fox\nguidance: 1.5\ntransition: 0\nlfos: {}\n",
    "plain": "prompt: a red fox\nguidance: 1.0\ntransition: 0\n",
}


def encode(text: str) -> torch.Tensor:
    return torch.randn((1, 77, 32), generator=torch.Generator().manual_seed(zlib.crc32(text.encode())))


class Rig:
    def __init__(self, folder: Any, *, quantize: str = "off", bpm: float = 120.0, real_clock: bool = False,
                 **kwargs: Any) -> None:
        for name, text in PRESETS.items():
            (folder / f"{name}.yaml").write_text(text)
        self.folder = folder
        settings = StreamSettings(width=SIZE, height=SIZE, t_index_list=(32, 45), cfg_type="self", seed=2)
        self.pipe = StreamPipeline(ShapeRunner(), LCMScheduler.from_config(SCHEDULER_CONFIG), settings,
                                   encode("a red fox"), encode(""))
        self.cache = PromptCache(encode)
        self.store = PresetStore(folder)
        cold = ColdSettings(model="tiny", vae=None, size=(SIZE, SIZE), steps=2, frame_buffer=1, cfg="self",
                            acceleration="none")
        self.errors: list[tuple[str, str]] = []
        self.echoes: list[dict[str, Any]] = []
        self.statuses: list[tuple[str, Any]] = []
        self.now = 0.0
        self.ctl = LiveController(
            self.pipe, self.cache, self.store, cold,
            initial={"prompt": "a red fox", "negative_prompt": "", "bpm": bpm},
            feedback=self.echoes.append, error=lambda a, r: self.errors.append((a, r)),
            status=lambda k, v: self.statuses.append((k, v)),
            clock=time.monotonic if real_clock else (lambda: self.now), quantize=quantize, **kwargs)
        assert self.ctl.prewarm(["a red fox", ""]).wait(10)
        assert self.ctl.prewarm().wait(10)
        self.guard = DeviceGuard()
        self.frame = torch.empty((1, 3, SIZE, SIZE), device="meta", dtype=torch.float16)
        self.ticks: list[float] = []

    @property
    def now(self) -> float:
        return self._base + self._k / FPS

    @now.setter
    def now(self, t: float) -> None:
        self._base, self._k = t, 0  # frames count from here without adding up rounding errors

    def step(self) -> None:
        """One frame: advance the clock by a frame, tick, run the pipeline (under the guard)."""
        self._k += 1
        with self.guard:
            self.ctl.tick()
            self.pipe(self.frame)
        self.ticks.append(self.now)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds * FPS)):
            self.step()

    def run_until(self, t: float) -> None:
        while self._base + (self._k + 1) / FPS <= t + 1e-9:
            self.step()

    def echoed(self, name: str) -> list[Any]:
        return [e[name] for e in self.echoes if name in e]

    def check(self) -> None:
        assert self.guard.violations == []
        assert self.pipe.runner.problems == []
        assert self.errors == []

    def close(self) -> None:
        self.ctl.close()
        self.cache.stop()
