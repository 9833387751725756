"""The pipeline makes and keeps every tensor on its own device and dtype, with no host sync per
frame. Runs on the ``meta`` device in float16 (see ``devguard``): what a CUDA float16 pipeline
would do with CPU float32 noise or embeddings fails here too."""

from __future__ import annotations

import pytest
import torch
from diffusers import LCMScheduler

from stream_core.pipeline import StreamPipeline, StreamSettings, make_noise
from stream_core.tiny import SCHEDULER_CONFIG
from tests.core.devguard import DeviceGuard, ShapeRunner, tensors_of

SIZE = 64


def embed(seed: int) -> torch.Tensor:
    """A CPU float32 embedding, as a text encoder on another device/dtype would hand it over."""
    return torch.randn((1, 77, 32), generator=torch.Generator().manual_seed(seed))


def meta_pipe(cfg: str = "self", steps=(32, 45), f: int = 1, **kw) -> StreamPipeline:
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=steps, cfg_type=cfg, frame_buffer_size=f, seed=3, **kw)
    return StreamPipeline(ShapeRunner(), LCMScheduler.from_config(SCHEDULER_CONFIG), s, embed(0), embed(1))


def frame(f: int = 1) -> torch.Tensor:
    return torch.empty((f, 3, SIZE, SIZE), device="meta", dtype=torch.float16)


def assert_all_on_device(pipe: StreamPipeline) -> None:
    held = tensors_of(pipe)
    assert "_noise_rows" in held and "_text_batch" in held
    for name, t in held.items():
        assert t.device.type == "meta", f"{name} is on {t.device}"
        if t.is_floating_point():
            # the guidance/delta/smoothing scalars are 0-dim float32 (scalars, no promotion)
            assert t.dtype == torch.float16 or (t.dim() == 0 and t.dtype == torch.float32), f"{name} is {t.dtype}"
    for name, t in {**tensors_of(pipe._seeds._cache), **{"noise": pipe.noise}}.items():
        assert (t.device.type, t.dtype) == ("meta", torch.float16), name


@pytest.mark.parametrize("cfg", ["none", "full", "self", "initialize"])
@pytest.mark.parametrize("denoising_batch", [True, False])
def test_frames_and_every_live_setter_stay_on_the_device(cfg, denoising_batch):
    pipe = meta_pipe(cfg, denoising_batch=denoising_batch, smoothing=0.3)
    assert_all_on_device(pipe)
    guard = DeviceGuard()
    with guard:
        pipe(frame())
        pipe.set_seed(7)
        pipe.set_seed_mix(7, 8, 0.4)
        pipe.set_strength(0.8)
        pipe.set_guidance_scale(2.0)
        pipe.set_delta(0.5)
        pipe.set_smoothing(0.6)
        pipe.set_conditioning(embed(2), embed(3), 0.3, embed(4))
        pipe(frame())
        pipe.begin_morph(seeds=(9, 9, 0.0), conditioning=(embed(5), None, 0.0, None))
        for u in (0.25, 0.5, 1.0):
            pipe.advance_morph(u)
            pipe(frame())
        pipe.end_morph()
        pipe.txt2img()
    assert guard.violations == []
    assert pipe.runner.problems == []
    assert_all_on_device(pipe)


def test_noise_is_drawn_and_uploaded_once_per_seed():
    pipe = meta_pipe()
    guard = DeviceGuard()
    with guard:
        for mix in (0.1, 0.5, 0.9, 0.0, 1.0):
            pipe.set_seed_mix(5, 6, mix)  # the seed crossfader moving: no new draws, no uploads
        first = guard.uploads
        for mix in (0.2, 0.7):
            pipe.set_seed_mix(5, 6, mix)
    assert first == 2  # seeds 5 and 6, once each
    assert guard.uploads == first
    assert guard.violations == []


def test_embeddings_are_checked_and_uploaded_once_per_handle():
    pipe = meta_pipe()
    a, b = embed(7), embed(8)
    checks = pipe._embeds.checks
    guard = DeviceGuard()
    with guard:
        for mix in (0.0, 0.3, 0.6, 1.0):
            pipe.set_conditioning(a, b, mix)  # the A/B crossfader moving
    assert pipe._embeds.checks == checks + 2
    assert guard.uploads == 2
    assert guard.violations == []


def test_non_finite_embeddings_are_refused_and_change_nothing():
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(32, 45), seed=3)
    pipe = StreamPipeline(ShapeRunner("cpu", torch.float32), LCMScheduler.from_config(SCHEDULER_CONFIG), s, embed(0))
    text = pipe._text_batch.clone()
    with pytest.raises(ValueError, match="NaN"):
        pipe.set_conditioning(embed(1), torch.full((1, 77, 32), float("nan")), 0.5)
    assert torch.equal(pipe._text_batch, text)


def test_float16_pipeline_holds_float16_noise_and_embeddings_given_float32():
    pipe = meta_pipe("full")
    pipe.set_noise(make_noise(4, 2, 4, SIZE // 8, SIZE // 8))  # float32 on the CPU
    pipe.set_prompt_embeds(embed(9), embed(10))
    assert (pipe.noise.device.type, pipe.noise.dtype) == ("meta", torch.float16)
    assert pipe.prompt_embeds.dtype == pipe.negative_prompt_embeds.dtype == torch.float16
    assert pipe._text_batch.dtype == torch.float16
    pipe(frame())
    assert pipe.runner.problems == []


def test_static_buffers_are_updated_in_place():
    """The state a captured frame reads keeps its storage across calls and live changes."""
    pipe = meta_pipe("initialize", steps=(16, 32, 45), f=2)
    names = ("_x_buffer", "_stock", "_wrap", "_noise_rows", "_text_batch", "_t_rows", "_alpha", "_beta",
             "_c_skip", "_c_out", "_ratio", "_g", "_delta", "_smoothing", "_smooth_prev")
    pipe(frame(2))
    before = {n: getattr(pipe, n) for n in names}
    pipe.set_seed_mix(1, 2, 0.5)
    pipe.set_strength(0.3)
    pipe.set_guidance_scale(3.0)
    pipe.set_smoothing(0.2)
    pipe.set_conditioning(embed(11), embed(12), 0.5, embed(13))
    pipe.begin_morph(seeds=(4, 4, 0.0))
    pipe.advance_morph(0.5)
    for _ in range(3):
        pipe(frame(2))
    for n in names:
        assert getattr(pipe, n) is before[n], f"{n} was re-bound"


def test_slerp_refuses_tensors_on_two_devices():
    """The mix-up that crashed every preset recall on CUDA (device noise vs CPU noise) is named."""
    from stream_core.blend import slerp

    on_device = torch.empty((2, 4, 8, 8), device="meta", dtype=torch.float16)
    with pytest.raises(ValueError, match="one device"):
        slerp(on_device, make_noise(1, 2, 4, 8, 8), 0.5)
