"""The temporal bank under the compile backend: the compiled runner hands over its U-Net, makes
its U-Net calls capture / compile again with the bank in place, and the bank runs static there;
what ``auto`` picks when a bank is configured, and what it refuses. (The CUDA-graph replay itself
is checked on a GPU: tests/temporal/test_cuda.py.)"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from stream_core.accel import compiled as compiled_mod
from stream_core.accel.auto import choose_acceleration
from stream_core.accel.compiled import CompiledRunner
from stream_core.accel.engines import StreamShape
from stream_core.pipeline import RebuildRequired, StreamPipeline, StreamSettings
from stream_core.runner import TorchRunner
from tests.temporal.conftest import SIZE, clip


def _settings(**kw) -> StreamSettings:
    kw.setdefault("temporal_max_frames", 2)
    return StreamSettings(width=SIZE, height=SIZE, t_index_list=(20, 32, 45), cfg_type="self", seed=4,
                          guidance_scale=1.5, **kw)


def test_a_compiled_runner_carries_the_bank_static_and_equals_eager(tiny_components, enc, monkeypatch):
    # torch.compile as the identity: the wiring, not inductor's code generation (slow on a CPU)
    monkeypatch.setattr(compiled_mod.torch, "compile", lambda fn, **kw: fn)
    pos, neg = enc.encode("a red fox"), enc.encode("")
    eager = StreamPipeline(TorchRunner(copy.deepcopy(tiny_components.unet), tiny_components.vae),
                           tiny_components.scheduler, _settings(temporal_static=True), pos, neg)
    runner = CompiledRunner(copy.deepcopy(tiny_components.unet), tiny_components.vae, compile_mode="inductor",
                            cuda_graphs=False)
    comp = StreamPipeline(runner, tiny_components.scheduler, _settings(), pos, neg)
    assert comp.temporal is not None and comp.temporal.static  # static under a compiled runner
    assert comp.temporal.unet is runner.base.unet_model
    changes = {3: lambda p: p.set_temporal_injection(0.5), 5: lambda p: p.set_temporal_cache(False),
               7: lambda p: (p.set_temporal_cache(True), p.set_temporal_frames(1))}
    with torch.inference_mode():
        for k in range(9):
            if k in changes:
                changes[k](eager)
                changes[k](comp)
            want, got = eager(clip(k)), comp(clip(k))
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=f"frame {k}")
    # the bank really ran inside the compiled runner's U-Net calls: its rings hold what the eager
    # bank's hold (the tiny random VAE hides most of the attention's effect on the picture)
    for store in ("keys", "values", "outputs"):
        for a, b in zip(getattr(comp.temporal, store), getattr(eager.temporal, store), strict=True):
            assert a.abs().max() > 0
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_static_bank_keeps_what_the_captured_call_recorded(tiny_components, enc):
    """A CUDA graph's replay does not run the processors: a static bank keeps the tensors they
    recorded (where each replay writes); an eager bank drops them after each call."""
    pos = enc.encode("a red fox")
    for static in (False, True):
        pipe = StreamPipeline(TorchRunner(copy.deepcopy(tiny_components.unet), tiny_components.vae),
                              tiny_components.scheduler, _settings(temporal_static=static), pos, enc.encode(""))
        with torch.inference_mode():
            pipe(clip(0))
        kept = [rec is not None for rec in pipe.temporal.fresh]
        assert kept == [static] * len(kept)


def test_ahead_of_time_packages_cannot_carry_the_bank(tiny_components, enc):
    runner = CompiledRunner(copy.deepcopy(tiny_components.unet), tiny_components.vae, compile_mode="aot",
                            cuda_graphs=False)
    with pytest.raises(RebuildRequired, match="compile_mode aot"):
        StreamPipeline(runner, tiny_components.scheduler, _settings(), enc.encode("a fox"))


SHAPE = StreamShape(SIZE, SIZE, 3, 1, 3, "self")


@pytest.mark.parametrize("device,dtype,want,why", [
    ("cuda", torch.float16, ("compile", "inductor"), "temporal bank"),
    ("cpu", torch.float32, ("onnxruntime", None), "temporal bank of 2"),  # its graphs carry the bank
    ("cpu", torch.float16, ("none", None), "runs float32"),  # as without a bank
    ("mps", torch.float16, ("none", None), "Apple GPUs"),
])
def test_auto_with_a_bank_picks_a_backend_that_carries_it(tmp_path, device, dtype, want, why):
    comps = SimpleNamespace(device=torch.device(device), dtype=dtype)
    choice = choose_acceleration(comps, "auto", shape=SHAPE, cache_dir=tmp_path, allow_build=True, temporal=2)
    assert (choice.backend, choice.compile_mode) == want
    assert why in choice.reason


@pytest.mark.parametrize("requested", ["onnxruntime", "tensorrt", "compile"])
def test_explicit_backends_carry_a_bank(tmp_path, requested):
    """The engine backends run U-Net graphs that take the bank as inputs (tests/accel/test_ort_temporal.py):
    an explicit choice comes back as asked."""
    comps = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)
    choice = choose_acceleration(comps, requested, shape=SHAPE, cache_dir=tmp_path, allow_build=True, temporal=2)
    assert choice.backend == requested
