"""GPU backends and live control on the tiny model: CUDA graphs and inductor (compile), auto,
TensorRT, and the LiveController driving a pipeline on the device. The CUDA cases are skipped
without CUDA (scripts/gpu-check.sh runs them on a GPU machine); the live-control test also runs on
the CPU, so its logic is checked on every CI run."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from bridge.selftest import tensors_off_device
from stream_core.accel import build_runner
from stream_core.runner import TorchRunner
from tests.accel.conftest import SIZE

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def cuda_components(tiny_model_dir):
    from stream_core.models import ModelSpec, load_components

    return load_components(ModelSpec(model=str(tiny_model_dir), device="cuda", dtype="float16"))


def _pipes(components, runner, cfg="self"):
    from stream_core.pipeline import StreamPipeline, StreamSettings
    from stream_core.prompts import PromptEncoder

    enc = PromptEncoder(components.tokenizer, components.text_encoder)
    pos, neg = enc.encode("a neon city"), enc.encode("")
    out = []
    for r in (TorchRunner(components.unet, components.vae), runner):
        s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(32, 45), cfg_type=cfg, seed=2)
        out.append(StreamPipeline(r, components.scheduler, s, pos, neg))
    return out


def _frames(n):
    g = torch.Generator().manual_seed(3)
    return [(torch.rand((1, 3, SIZE, SIZE), generator=g) * 2 - 1).cuda().half() for _ in range(n)]


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU with CUDA (none visible to torch)")
@pytest.mark.parametrize("cfg", ["self", "full"])
def test_cuda_graph_runner_matches_eager(cuda_components, tmp_path, cfg):
    from stream_core.accel import StreamShape

    shape = StreamShape.for_stream(SIZE, SIZE, 2, 1, cfg)
    runner = build_runner(cuda_components, "compile", batch=shape.batch, width=SIZE, height=SIZE, cache_dir=tmp_path,
                          allow_build=False, steps=2, cfg_type=cfg)
    ref, pipe = _pipes(cuda_components, runner, cfg)
    for frame in _frames(4):
        torch.testing.assert_close(pipe(frame), ref(frame), atol=2e-2, rtol=0)


@pytest.mark.tensorrt
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU with CUDA (none visible to torch)")
@pytest.mark.skipif(not HAS_TRT, reason='TensorRT is not installed (pip install "streambridge[tensorrt]")')
def test_tensorrt_pipeline_matches_torch(cuda_components, tmp_path):
    runner = build_runner(cuda_components, "tensorrt", batch=2, width=SIZE, height=SIZE, cache_dir=tmp_path,
                          allow_build=True, steps=2, cfg_type="self")
    ref, pipe = _pipes(cuda_components, runner)
    for frame in _frames(3):
        torch.testing.assert_close(pipe(frame), ref(frame), atol=5e-2, rtol=0)
    # a second start finds the verified engines and builds nothing
    again = build_runner(cuda_components, "tensorrt", batch=2, width=SIZE, height=SIZE, cache_dir=tmp_path,
                         allow_build=False, steps=2, cfg_type="self")
    assert again.info["built"] == []


# ---------------------------------------------------------------------------- live control on the device
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not HAS_CUDA, reason="needs an NVIDIA GPU with CUDA (none visible to torch)")]),
]
A_PROMPT, B_PROMPT, X_PROMPT = "a quiet blue room", "a neon city at night", "molten gold"


@pytest.mark.parametrize("device", DEVICES)
def test_live_control_on_the_device(tiny_model_dir, tmp_path, device):
    """A pipeline on ``device`` driven by the LiveController as the render loop does: a preset
    recall with a transition (prompt, seed and floats morph), a seed crossfade and a prompt
    crossfade, frame by frame. Nothing may be reported or raised, every output is finite, and every
    tensor the pipeline and the controller hold stays on the device (the first CUDA run crashed
    every tick here: the morph's target noise was on the CPU)."""
    import yaml

    from bridge.control.surface import RecallPreset, SetParams
    from bridge.live import LiveController
    from bridge.presets import ColdSettings, PresetStore
    from bridge.prompt_cache import PromptCache
    from stream_core.engine import StreamEngine
    from stream_core.models import ModelSpec, load_components
    from stream_core.pipeline import StreamSettings

    dtype = "float16" if device == "cuda" else "float32"
    components = load_components(ModelSpec(model=str(tiny_model_dir), device=device, dtype=dtype))
    settings = StreamSettings(width=SIZE, height=SIZE, t_index_list=(32, 45), cfg_type="self", seed=2)
    engine = StreamEngine(components, settings, A_PROMPT, "")
    pipe = engine.pipeline
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "morph.yaml").write_text(yaml.safe_dump(
        {"prompt": B_PROMPT, "seed": 999, "guidance": 1.8, "strength": 0.7, "delta": 0.8, "transition": 1.0}))
    store = PresetStore(presets)
    errors: list[tuple[str, str]] = []
    cache = PromptCache(engine.encoder.encode, capacity=16)
    cold = ColdSettings(model="tiny", vae=None, size=(SIZE, SIZE), steps=2, frame_buffer=1, cfg="self",
                        acceleration="none")
    ctrl = LiveController(pipe, cache, store, cold, initial={"prompt": A_PROMPT, "negative_prompt": ""},
                          error=lambda address, reason: errors.append((address, reason)))
    try:
        assert ctrl.prewarm([A_PROMPT, B_PROMPT, X_PROMPT, ""]).wait(60)
        rgb = np.random.default_rng(0).integers(0, 255, (1, SIZE, SIZE, 3), dtype=np.uint8)
        now = 100.0

        def frames(count: int, dt: float = 0.1) -> None:
            nonlocal now
            for _ in range(count):
                ctrl.tick(now)
                out = engine.process(rgb)
                assert out.shape == (1, SIZE, SIZE, 3)
                assert torch.isfinite(pipe.noise).all()
                now += dt

        frames(2)
        ctrl.submit([RecallPreset("morph")])
        frames(4)  # mid-morph: noise, embeddings and floats are blends
        assert ctrl.current_preset == "morph" and ctrl.values["seed"] != 999  # still morphing
        frames(10)  # past the 1 s transition: the morph has ended on the preset's exact values
        assert ctrl.values["seed"] == 999 and ctrl.values["guidance"] == pytest.approx(1.8)
        assert pipe.guidance_scale == pytest.approx(1.8)
        ctrl.submit([SetParams({"seed_b": 7})])
        for mix in (0.25, 0.5, 0.75):  # seed crossfade
            ctrl.submit([SetParams({"seed_mix": mix})])
            frames(2)
        ctrl.submit([SetParams({"prompt_b": X_PROMPT})])
        frames(1)
        for mix in (0.3, 0.6, 0.9):  # prompt crossfade
            ctrl.submit([SetParams({"prompt_mix": mix})])
            frames(2)
        assert ctrl.values["prompt_mix"] == pytest.approx(0.9) and ctrl.values["seed_mix"] == pytest.approx(0.75)
        assert errors == []
        dev = torch.device(device)
        off = tensors_off_device(pipe, dev, "pipeline") + tensors_off_device(ctrl, dev, "controller")
        assert off == [], off
    finally:
        ctrl.close()
        cache.stop()
        store.stop()


def test_the_device_check_finds_a_tensor_elsewhere():
    """tensors_off_device itself: a meta tensor in a dict of a CPU object is named."""

    class Holder:
        def __init__(self) -> None:
            self.ok = torch.zeros(2)
            self.cache = {5: torch.zeros(2, device="meta")}

    assert tensors_off_device(Holder(), torch.device("cpu"), "h") == ["h.cache[5] on meta"]


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU with CUDA (none visible to torch)")
@pytest.mark.parametrize("mode", ["inductor", "auto"])
def test_compiled_backends_match_eager(cuda_components, tmp_path, mode):
    """acceleration: compile with inductor under the CUDA graphs, and what acceleration: auto picks
    on CUDA, give eager's pictures."""
    from stream_core.accel import AccelOptions, StreamShape
    from stream_core.accel.auto import runner_for

    shape = StreamShape.for_stream(SIZE, SIZE, 2, 1, "self")
    if mode == "inductor":
        runner = build_runner(cuda_components, "compile", batch=shape.batch, width=SIZE, height=SIZE,
                              cache_dir=tmp_path, allow_build=True, steps=2, cfg_type="self",
                              options=AccelOptions(compile_mode="inductor"))
    else:
        runner, choice = runner_for(cuda_components, "auto", width=SIZE, height=SIZE, steps=2, frame_buffer=1,
                                    cfg_type="self", cache_dir=tmp_path, allow_build=None)
        assert (choice.backend, choice.compile_mode) == ("compile", "inductor")
    ref, pipe = _pipes(cuda_components, runner, "self")
    for frame in _frames(4):
        torch.testing.assert_close(pipe(frame), ref(frame), atol=3e-2, rtol=0)
