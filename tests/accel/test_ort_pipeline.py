"""The onnxruntime backend runs the whole StreamPipeline and gives the torch pipeline's frames."""

from __future__ import annotations

import pytest
import torch

from stream_core.accel import AccelOptions, EngineMissingError, build_runner, build_text_encoder
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.prompts import PromptEncoder
from stream_core.runner import CountingRunner, TorchRunner
from tests.accel.conftest import SIZE, STEPS, T_LIST

pytest.importorskip("onnxruntime")


def _clip(count, seed=7):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand((1, 3, SIZE, SIZE), generator=g) * 2 - 1
    return [torch.roll(base, shifts=3 * k, dims=3) for k in range(count)]


def _pipe(runner, components, embeds, cfg, **kw):
    pos, neg = embeds
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=T_LIST, cfg_type=cfg, guidance_scale=1.5, delta=0.9,
                       seed=4, **kw)
    return StreamPipeline(runner, components.scheduler, s, pos, neg)


def _runner_for(ort_engines, components, cache, cfg, batch):
    """``none``: the whole factory path (all graphs from the default exporter, found by key).
    Other modes: a GraphRunner over the session's graphs (their U-Nets came from the TorchScript
    exporter, see conftest), which is what build_runner assembles too."""
    if cfg == "none":
        return build_runner(components, "onnxruntime", batch=batch, width=SIZE, height=SIZE, cache_dir=cache,
                            allow_build=False, steps=STEPS, cfg_type=cfg)
    from stream_core.accel.graph_runner import GraphRunner
    from stream_core.accel.ort import OrtGraph

    g = {c: OrtGraph(ort_engines[cfg][c].main) for c in ("unet", "vae_enc", "vae_dec")}
    return GraphRunner(g["unet"], g["vae_enc"], g["vae_dec"], device=torch.device("cpu"), dtype=torch.float32,
                       backend="onnxruntime")


@pytest.mark.parametrize("cfg", ["none", "self", "initialize", "full"])
def test_ort_pipeline_matches_torch_pipeline(tiny_components, embeds, ort_engines, accel_cache, cfg):
    ref = _pipe(TorchRunner(tiny_components.unet, tiny_components.vae), tiny_components, embeds, cfg)
    runner = _runner_for(ort_engines, tiny_components, accel_cache, cfg, ref.unet_batch)
    assert runner.device == torch.device("cpu") and runner.dtype == torch.float32
    counting = CountingRunner(runner)
    pipe = _pipe(counting, tiny_components, embeds, cfg)
    outs = []
    for k, frame in enumerate(_clip(4)):
        a, b = ref(frame), pipe(frame)
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
        outs.append(b)
        if k == 1:  # live changes are graph inputs: no rebuild, still equal
            for p in (ref, pipe):
                p.set_strength(0.6)
                p.set_guidance_scale(1.2)
                p.set_seed(9)
    assert set(counting.unet_batches) == {ref.unet_batch}
    assert not torch.equal(outs[2], outs[3])
    assert outs[2].data_ptr() != outs[3].data_ptr()  # results are the caller's, not a reused buffer


def test_ort_txt2img_and_frame_buffer_2(tiny_components, embeds, accel_cache):
    """f=2 builds its own engines (batch n*f) and still matches torch; txt2img too. (TorchScript
    exporter here: the other tests cover the default dynamo exporter, and this one is 7x faster.)"""
    torch_runner = TorchRunner(tiny_components.unet, tiny_components.vae)
    ref = _pipe(torch_runner, tiny_components, embeds, "self", frame_buffer_size=2)
    runner = build_runner(tiny_components, "onnxruntime", batch=ref.unet_batch, width=SIZE, height=SIZE,
                          cache_dir=accel_cache, allow_build=True, frame_buffer_size=2, steps=STEPS, cfg_type="self",
                          options=AccelOptions(exporter="torchscript"))
    pipe = _pipe(runner, tiny_components, embeds, "self", frame_buffer_size=2)
    clip = torch.cat(_clip(2))
    torch.testing.assert_close(pipe(clip), ref(clip), atol=1e-4, rtol=0)
    torch.testing.assert_close(pipe.txt2img(), ref.txt2img(), atol=1e-4, rtol=0)


def test_missing_engine_without_build_names_the_command(tiny_components, tmp_path):
    with pytest.raises(EngineMissingError) as info:
        build_runner(tiny_components, "onnxruntime", batch=2, width=SIZE, height=SIZE, cache_dir=tmp_path,
                     allow_build=False, steps=2, cfg_type="self")
    msg = str(info.value)
    assert "streambridge engines build" in msg and "--steps 2" in msg and "--cfg self" in msg
    assert f"--size {SIZE}x{SIZE}" in msg and str(tmp_path) in msg
    assert not list(tmp_path.glob("ort/*"))  # nothing half-built


def test_ort_text_encoder_matches_torch(tiny_components, embeds, ort_engines, accel_cache):
    text = build_text_encoder(tiny_components, "onnxruntime", cache_dir=accel_cache, allow_build=False)
    enc = PromptEncoder(tiny_components.tokenizer, text)
    torch.testing.assert_close(enc.encode("a neon city at night"), embeds[0], atol=1e-5, rtol=1e-4)
    assert build_text_encoder(tiny_components, "none", cache_dir=accel_cache, allow_build=False) is tiny_components.text_encoder
