"""GPU backends on the tiny model: CUDA graphs (compile) and TensorRT. Skipped without CUDA/TensorRT."""

from __future__ import annotations

import importlib.util

import pytest
import torch

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
