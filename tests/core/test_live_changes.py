"""Live changes between frames keep the buffer and shapes; cold changes raise clearly."""

from __future__ import annotations

import pytest
import torch

from stream_core.pipeline import RebuildRequired, StreamPipeline, StreamSettings
from stream_core.prompts import PromptEncoder
from stream_core.runner import CountingRunner, TorchRunner
from stream_core.schedule import strength_to_t_index_list

SIZE = 64


@pytest.fixture(scope="module")
def enc(tiny_components):
    return PromptEncoder(tiny_components.tokenizer, tiny_components.text_encoder)


def make(tiny_components, enc, cfg="self", n_list=(20, 32, 45), seed=4, f=1):
    runner = CountingRunner(TorchRunner(tiny_components.unet, tiny_components.vae))
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=n_list, cfg_type=cfg, seed=seed,
                       frame_buffer_size=f, guidance_scale=1.5)
    return StreamPipeline(runner, tiny_components.scheduler, s, enc.encode("a red fox"), enc.encode(""))


def clip(k, seed=0):
    g = torch.Generator().manual_seed(seed + k)
    return torch.rand((1, 3, SIZE, SIZE), generator=g) * 2 - 1


@pytest.mark.parametrize("cfg", ["none", "full", "self", "initialize"])
def test_live_changes_keep_buffer_and_batch(tiny_components, enc, cfg):
    pipe = make(tiny_components, enc, cfg)
    for k in range(3):
        pipe(clip(k))
    buf_before = pipe._x_buffer.clone()
    batch = pipe.unet_batch
    primed_calls = len(pipe.runner.unet_batches)
    # every live change in turn, each followed by a frame
    pipe.set_prompt_embeds(enc.encode("a blue whale"), enc.encode("ugly"))
    out_prompt = pipe(clip(3))
    pipe.set_guidance_scale(2.5)
    pipe.set_delta(0.5)
    pipe(clip(4))
    pipe.set_strength(0.8)
    pipe(clip(5))
    pipe.set_seed(99)
    pipe(clip(6))
    pipe.set_filter(0.99, 5)
    pipe(clip(7))
    # no re-priming happened: exactly one U-Net call per frame after start-up
    assert len(pipe.runner.unet_batches) == primed_calls + 5
    assert set(pipe.runner.unet_batches) == {batch}
    assert pipe._x_buffer.shape == buf_before.shape
    assert pipe.t_index_list == strength_to_t_index_list(0.8, 3)
    assert torch.isfinite(out_prompt).all()


def test_prompt_change_changes_output_without_restart(tiny_components, enc):
    a = make(tiny_components, enc, "full")
    b = make(tiny_components, enc, "full")
    for k in range(3):
        a(clip(k))
        b(clip(k))
    b.set_prompt_embeds(enc.encode("a blue whale"))  # negative kept from before
    oa, ob = a(clip(3)), b(clip(3))
    assert not torch.allclose(oa, ob)
    # the buffer rows that entered before the change are still in flight in b
    assert b._x_buffer.shape == a._x_buffer.shape


def test_buffer_survives_prompt_change(tiny_components, enc):
    """The frame already in the buffer still leaves (no reset): after a prompt change the first
    output differs from a cold-started pipeline with the new prompt."""
    warm = make(tiny_components, enc, "self")
    for k in range(3):
        warm(clip(k))
    warm.set_prompt_embeds(enc.encode("a blue whale"))
    cold = make(tiny_components, enc, "self")
    cold.set_prompt_embeds(enc.encode("a blue whale"))
    assert not torch.allclose(warm(clip(3)), cold(clip(3)))


def test_cold_changes_raise(tiny_components, enc):
    pipe = make(tiny_components, enc)
    with pytest.raises(RebuildRequired, match="3"):
        pipe.set_t_index_list((10, 40))
    with pytest.raises(RebuildRequired, match="steps"):
        pipe.check_rebuild(steps=2)
    with pytest.raises(RebuildRequired, match="cfg_type"):
        pipe.check_rebuild(cfg_type="full")
    with pytest.raises(RebuildRequired):
        pipe.set_prompt_embeds(torch.zeros(1, 10, 32))
    pipe.check_rebuild(steps=3, width=SIZE, height=SIZE, frame_buffer_size=1, cfg_type="self")


@pytest.mark.parametrize(
    "call,bad",
    [("set_guidance_scale", float("nan")), ("set_delta", float("inf")), ("set_strength", 1.5),
     ("set_strength", -0.1), ("set_seed", -1), ("set_seed", 1.5), ("set_filter", -1.0)],
)
def test_bad_live_values_rejected_and_change_nothing(tiny_components, enc, call, bad):
    pipe = make(tiny_components, enc)
    pipe(clip(0))
    state = (pipe.guidance_scale, pipe.delta, pipe.t_index_list, pipe.seed, pipe.filter.threshold)
    with pytest.raises(ValueError):
        getattr(pipe, call)(bad)
    assert state == (pipe.guidance_scale, pipe.delta, pipe.t_index_list, pipe.seed, pipe.filter.threshold)


def test_bad_frame_shape_rejected(tiny_components, enc):
    pipe = make(tiny_components, enc)
    with pytest.raises(ValueError, match="shaped"):
        pipe(torch.zeros(1, 3, SIZE, SIZE + 8))


def test_same_seed_same_output_different_seed_differs(tiny_components, enc):
    outs = []
    for seed in (4, 4, 5):
        pipe = make(tiny_components, enc, seed=seed)
        outs.append(torch.cat([pipe(clip(k)) for k in range(4)]))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2], atol=1e-3)


def test_txt2img_one_step(tiny_components, enc):
    runner = TorchRunner(tiny_components.unet, tiny_components.vae)
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(0,), cfg_type="none", seed=1)
    pipe = StreamPipeline(runner, tiny_components.scheduler, s, enc.encode("a cat"))
    a = pipe.txt2img()
    b = pipe.txt2img()
    assert a.shape == (1, 3, SIZE, SIZE)
    assert torch.equal(a, b)  # fixed noise: the same picture every call
    pipe.set_seed(2)
    assert not torch.allclose(pipe.txt2img(), a)


def test_strength_mapping_monotonic_and_valid():
    for n in range(1, 6):
        prev = None
        for i in range(101):
            lst = strength_to_t_index_list(i / 100, n)
            assert len(lst) == n and all(b > a for a, b in zip(lst, lst[1:], strict=False))
            assert 0 <= lst[0] and lst[-1] <= 49
            if prev is not None:
                assert all(x <= y for x, y in zip(lst, prev, strict=True))  # higher strength, lower indices
            prev = lst
    assert strength_to_t_index_list(1.0, 1) == (0,)
    assert strength_to_t_index_list(0.0, 2) == (44, 45)
    assert strength_to_t_index_list(0.35, 2) == (29, 45)
