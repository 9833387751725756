"""On a CUDA GPU: the bank under a whole-frame CUDA graph equals the eager bank, and live settings
written between replays act on the next replay (no re-capture). Skipped without CUDA."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.temporal.conftest import clip

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _pipe(comps, enc, **kw):
    from stream_core.pipeline import StreamPipeline, StreamSettings
    from stream_core.runner import TorchRunner

    s = StreamSettings(width=64, height=64, t_index_list=(20, 32, 45), cfg_type="self", seed=4,
                       temporal_max_frames=2, **kw)
    runner = TorchRunner(copy.deepcopy(comps.unet), comps.vae)
    return StreamPipeline(runner, comps.scheduler, s, enc.encode("a red fox"), enc.encode(""))


@torch.inference_mode()
def test_captured_bank_equals_eager_and_follows_live_settings(tiny_model_dir):
    from stream_core.accel.frame_graph import FrameGraph
    from stream_core.engine import pack_rgb
    from stream_core.models import ModelSpec, load_components
    from stream_core.prompts import PromptEncoder

    comps = load_components(ModelSpec(model=str(tiny_model_dir), device="cuda", dtype="float16"))
    enc = PromptEncoder(comps.tokenizer, comps.text_encoder)
    eager = _pipe(comps, enc, temporal_static=True)
    captured = _pipe(comps, enc)
    graph = FrameGraph(captured, capture=True)
    changes = {4: lambda p: p.set_temporal_injection(0.6), 6: lambda p: p.set_temporal_cache(False),
               8: lambda p: (p.set_temporal_cache(True), p.set_temporal_frames(1)), 9: lambda p: p.set_latent_feedback(0.3)}
    for k in range(11):
        if k in changes:
            changes[k](eager)
            changes[k](captured)
        x = clip(k).to("cuda", torch.float16)
        want = pack_rgb(eager(x))
        got, finite = graph(x)
        assert bool(finite)
        assert (want.int() - got.int()).abs().max().item() <= 2, f"frame {k}"
    assert graph.graph is not None


@torch.inference_mode()
@pytest.mark.parametrize("compile_mode", ["graphs", "inductor"])
def test_compiled_runner_captures_its_unet_with_the_bank(tiny_model_dir, compile_mode):
    """The compile backend (per-call CUDA graphs, and inductor under them) re-captures its U-Net
    call with the bank in place on the first frame; later frames replay it (the processors do not
    run) and still read and write the ring, and live settings need no new capture."""
    from stream_core.accel.compiled import CompiledRunner
    from stream_core.engine import pack_rgb
    from stream_core.models import ModelSpec, load_components
    from stream_core.pipeline import StreamPipeline, StreamSettings
    from stream_core.prompts import PromptEncoder

    comps = load_components(ModelSpec(model=str(tiny_model_dir), device="cuda", dtype="float16"))
    enc = PromptEncoder(comps.tokenizer, comps.text_encoder)
    eager = _pipe(comps, enc, temporal_static=True)
    runner = CompiledRunner(copy.deepcopy(comps.unet), comps.vae, compile_mode=compile_mode, cuda_graphs=True)
    s = StreamSettings(width=64, height=64, t_index_list=(20, 32, 45), cfg_type="self", seed=4, temporal_max_frames=2)
    comp = StreamPipeline(runner, comps.scheduler, s, enc.encode("a red fox"), enc.encode(""))
    assert comp.temporal.static
    changes = {4: lambda p: p.set_temporal_injection(0.6), 6: lambda p: p.set_temporal_cache(False),
               8: lambda p: (p.set_temporal_cache(True), p.set_temporal_frames(1))}
    graph = None
    for k in range(11):
        if k in changes:
            changes[k](eager)
            changes[k](comp)
        x = clip(k).to("cuda", torch.float16)
        want, got = pack_rgb(eager(x)), pack_rgb(comp(x))
        assert (want.int() - got.int()).abs().max().item() <= 3, f"frame {k}"
        if k == 1:
            graph = runner._unet_call.graph
    assert graph is not None and runner._unet_call.graph is graph  # captured once, replayed after
    for a, b in zip(comp.temporal.keys, eager.temporal.keys, strict=True):
        assert (a.float() - b.float()).abs().max().item() < 0.05
