"""The temporal bank under per-call CUDA graphs with a ControlNet, on the CPU: a stand-in for
CUDA-graph semantics (a replay rewrites the tensors captured, and runs no Python) shows that each
graphed U-Net call (with and without ControlNet residuals) hands the bank what *it* recorded, and
that attaching a bank to a warmed-up runner captures both U-Net calls at start, not mid-show."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from stream_core.accel import compiled as compiled_mod
from stream_core.accel.compiled import CompiledRunner, CudaGraphCall
from stream_core.controlnet import ControlNetSpec
from stream_core.models import ModelSpec, load_components, with_controlnets
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.prompts import PromptEncoder
from stream_core.runner import TorchRunner
from stream_core.tiny import make_tiny_controlnet
from tests.temporal.conftest import clip


def _fake_capture(self: CudaGraphCall, args: tuple[torch.Tensor, ...]) -> None:
    """Capture = run once, keep the inputs, the output and (for a bank's call) the tensors its
    processors recorded; replay = recompute into exactly those tensors, the bank's Python state
    untouched (what a CUDA graph's replay does)."""
    self.static_in = [a.detach().clone() for a in args]
    self.static_out = self.fn(*self.static_in)
    bank = getattr(self, "bank", None)  # a graphed call over a temporal bank's processors
    captured = [tuple(r) for r in bank.fresh] if bank is not None and all(bank.fresh) else None

    def replay() -> None:
        saved = list(bank.fresh) if bank is not None else None
        out = self.fn(*self.static_in)
        self.static_out.copy_(out)
        if captured is not None:
            for old, new in zip(captured, bank.fresh, strict=True):
                for x, y in zip(old, new, strict=True):
                    x.copy_(y)
        if saved is not None:
            bank.fresh[:] = saved  # a replay runs no Python: the bank's list is as it was

    self.graph = SimpleNamespace(replay=replay)


@pytest.fixture
def cn_components(tiny_model_dir, tmp_path):
    comps = load_components(ModelSpec(model=str(tiny_model_dir), device="cpu", dtype="float32"))
    cn = make_tiny_controlnet(tmp_path / "cn", tiny_model_dir, seed=1)
    return with_controlnets(comps, [ControlNetSpec(str(cn), 1.0)])


def _settings(**kw) -> StreamSettings:
    return StreamSettings(width=64, height=64, t_index_list=(20, 32, 45), cfg_type="self", seed=4,
                          guidance_scale=1.5, temporal_max_frames=2, **kw)


def _graphed_runner(comps) -> CompiledRunner:
    runner = CompiledRunner(copy.deepcopy(comps.unet), comps.vae, compile_mode="inductor", cuda_graphs=False,
                            controlnets=[u.model for u in comps.controlnets])
    runner.cuda_graphs = True  # per-call graphs over the U-Net calls, as on a GPU
    runner._unet_call = CudaGraphCall(runner._unet_call, "unet")
    runner._unet_res_call = CudaGraphCall(runner._unet_res_call, "unet_res")
    return runner


def test_each_graphed_unet_call_hands_the_bank_its_own_tensors(cn_components, monkeypatch):
    monkeypatch.setattr(compiled_mod.torch, "compile", lambda fn, **kw: fn)
    monkeypatch.setattr(CudaGraphCall, "_capture", _fake_capture)
    comps = cn_components
    enc = PromptEncoder(comps.tokenizer, comps.text_encoder)
    pos, neg = enc.encode("a red fox"), enc.encode("")
    units = list(comps.controlnets)
    eager = StreamPipeline(TorchRunner(copy.deepcopy(comps.unet), comps.vae, [u.model for u in units]),
                           comps.scheduler, _settings(temporal_static=True), pos, neg, controlnets=units)
    runner = _graphed_runner(comps)
    graphed = StreamPipeline(runner, comps.scheduler, _settings(), pos, neg, controlnets=units)
    assert graphed.temporal.static
    g = torch.Generator().manual_seed(3)
    scales = {3: 0.0, 5: 1.0}  # the ControlNet fades out and back: the other U-Net graph takes over
    with torch.inference_mode():
        for k in range(9):
            if k in scales:
                eager.set_controlnet(0, scale=scales[k])
                graphed.set_controlnet(0, scale=scales[k])
            control = [torch.rand((1, 3, 64, 64), generator=g)]
            want, got = eager(clip(k), control), graphed(clip(k), control)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=f"frame {k}")
            for a, b in zip(graphed.temporal.keys, eager.temporal.keys, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"ring keys, frame {k}")


def test_a_warmed_up_runner_captures_both_unet_calls_with_the_bank_at_start(cn_components, monkeypatch):
    monkeypatch.setattr(compiled_mod.torch, "compile", lambda fn, **kw: fn)
    monkeypatch.setattr(CudaGraphCall, "_capture", _fake_capture)
    comps = cn_components
    enc = PromptEncoder(comps.tokenizer, comps.text_encoder)
    runner = _graphed_runner(comps)
    pipe_batch = StreamPipeline.batch_for("self", 3, 1)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn((pipe_batch, 4, 8, 8), generator=g)
    timesteps = torch.tensor([999, 500, 99][:pipe_batch])
    text = enc.encode("a fox").expand(pipe_batch, -1, -1).contiguous()
    images = torch.rand((1, 3, 64, 64), generator=g) * 2 - 1
    runner.warm_up(latents, timesteps, text, images)
    pipe = StreamPipeline(runner, comps.scheduler, _settings(), enc.encode("a fox"), enc.encode(""),
                          controlnets=list(comps.controlnets))
    # before any frame: both U-Net calls are captured again, over the bank's processors
    for call in (runner._unet_call, runner._unet_res_call):
        assert type(call).__name__ == "_BankGraphCall" and call.graph is not None
        assert call.recorded is not None and all(r is not None for r in call.recorded)
    assert pipe.temporal._call is None  # the warm-up call left no open bank call
    with torch.inference_mode():
        pipe(clip(0), [torch.rand((1, 3, 64, 64), generator=g)])
