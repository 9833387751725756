"""The core correctness property: every frame leaving the stream equals an independent sequential
per-frame computation written from the formulas (StreamDiffusion, section "stream batch")."""

from __future__ import annotations

import itertools

import pytest
import torch

from stream_core.pipeline import StreamPipeline, StreamSettings, make_noise
from stream_core.prompts import PromptEncoder
from stream_core.runner import CountingRunner, TorchRunner
from stream_core.schedule import step_scalars

SIZE = 64
T_LISTS = {1: (30,), 2: (32, 45), 3: (20, 32, 45)}


def frames(count: int, f: int, seed: int = 7) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand((1, 3, SIZE, SIZE), generator=g) * 2 - 1
    out = []
    for k in range(count):
        # a slowly changing clip: base + drift, so frames differ
        fr = [torch.roll(base, shifts=(k * f + j) * 3, dims=3) for j in range(f)]
        out.append(torch.cat(fr).clamp(-1, 1))
    return out


def sequential_frame(runner, scheduler, image, t_list, cfg, g, delta, noise, pos, neg, add_noise, carry=None,
                     with_delta=False):
    """One frame through all steps, from the formulas, with no stream buffer at all.

    ``carry``: with one step and ``self`` guidance the residual noise's step of the previous
    frame (Delta) is carried into this frame's residual noise, S = N[0] + Delta, as the reference
    does (its ``stock_noise = init_noise + delta_x`` with a_next = b_next = 1 for the last row).
    ``with_delta`` also returns this frame's last Delta."""
    sc = step_scalars(scheduler, t_list)
    a = sc.alpha.float()
    b = sc.beta.float()
    cs = sc.c_skip.float()
    co = sc.c_out.float()
    n = len(t_list)
    z = runner.encode(image)
    x = a[0] * z + b[0] * noise[0:1]
    stock = noise[0:1].clone() if carry is None else noise[0:1] + carry
    if cfg == "initialize":
        stock = runner.unet(x, sc.timesteps[0:1], neg)
    x0h = None
    for i in range(n):
        t = sc.timesteps[i : i + 1]
        ec = runner.unet(x, t, pos)
        if cfg == "none":
            e = ec
        elif cfg == "full":
            eu = runner.unet(x, t, neg)
            e = eu + g * (ec - eu)
        else:
            e = delta * stock + g * (ec - delta * stock)
        x0h = co[i] * (x - b[i] * e) / a[i] + cs[i] * x
        bs = b[i] * stock
        dx = co[i] * (bs - b[i] * e) / a[i] + cs[i] * bs
        if i < n - 1:
            stock = (a[i + 1] / b[i + 1]) * dx + (noise[i + 1 : i + 2] if add_noise else 0)
            x = a[i + 1] * x0h + (b[i + 1] * noise[i + 1 : i + 2] if add_noise else 0)
    out = runner.decode(x0h).clamp(-1, 1)
    return (out, dx) if with_delta else out


@pytest.fixture(scope="module")
def encoded(tiny_components):
    enc = PromptEncoder(tiny_components.tokenizer, tiny_components.text_encoder)
    return enc.encode("a neon city"), enc.encode("blurry")


CASES = list(itertools.product(["none", "full", "self", "initialize"], [1, 2, 3], [1, 2], [True, False]))


@pytest.mark.parametrize("cfg,n,f,add_noise", CASES)
def test_stream_equals_sequential(tiny_components, encoded, cfg, n, f, add_noise):
    pos, neg = encoded
    runner = CountingRunner(TorchRunner(tiny_components.unet, tiny_components.vae))
    t_list = T_LISTS[n]
    settings = StreamSettings(
        width=SIZE, height=SIZE, t_index_list=t_list, frame_buffer_size=f, cfg_type=cfg,
        guidance_scale=1.6, delta=0.8, seed=11, add_noise=add_noise,
    )
    pipe = StreamPipeline(runner, tiny_components.scheduler, settings, pos, neg)
    calls = n + 1
    inputs = frames(calls, f)
    outputs = [pipe(x) for x in inputs]
    # every U-Net call has the mode's static batch (priming included)
    expected_batch = {"none": n * f, "self": n * f, "initialize": (n + 1) * f, "full": 2 * n * f}[cfg]
    assert set(runner.unet_batches) == {expected_batch}
    assert pipe.unet_batch == expected_batch
    noise = make_noise(11, n, 4, SIZE // 8, SIZE // 8)
    seq_runner = TorchRunner(tiny_components.unet, tiny_components.vae)
    carries = [None] * f  # one step, self guidance: each frame slot carries its residual step
    for k, out in enumerate(outputs):
        src = max(0, k - (n - 1))  # latency n-1; before that, primed with frame 0
        for j in range(f):
            ref, dx = sequential_frame(
                seq_runner, tiny_components.scheduler, inputs[src][j : j + 1], t_list, cfg, 1.6, 0.8,
                noise, pos, neg, add_noise, carry=carries[j], with_delta=True,
            )
            if n == 1 and cfg == "self":
                carries[j] = dx
            torch.testing.assert_close(out[j : j + 1], ref, atol=2e-4, rtol=0)


@pytest.mark.parametrize("cfg", ["none", "full", "self", "initialize"])
def test_frame_buffer_2_equals_frame_buffer_1(tiny_components, encoded, cfg):
    pos, neg = encoded
    runner = TorchRunner(tiny_components.unet, tiny_components.vae)

    def run(f):
        s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(20, 32, 45), frame_buffer_size=f,
                           cfg_type=cfg, guidance_scale=1.4, delta=1.0, seed=5)
        return StreamPipeline(runner, tiny_components.scheduler, s, pos, neg)

    clip = torch.cat(frames(6, 1))  # 6 frames
    p1, p2 = run(1), run(2)
    out1 = torch.cat([p1(clip[k : k + 1]) for k in range(6)])
    out2 = torch.cat([p2(clip[k : k + 2]) for k in range(0, 6, 2)])
    # with f=2 the stream's latency is (n-1) calls of 2 frames; after priming, frame k leaves
    # f=1 at call k+2 and f=2 at call (k//2)+2: compare the frames both streams have emitted.
    torch.testing.assert_close(out2[4:6], out1[2:4], atol=2e-4, rtol=0)
    assert not torch.allclose(out1[2], out1[3])  # frames really differ


def test_first_outputs_are_real_frames(tiny_components, encoded):
    """No garbage at start-up: the first output is the first input's sequential result."""
    pos, neg = encoded
    runner = TorchRunner(tiny_components.unet, tiny_components.vae)
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(20, 32, 45), cfg_type="self", seed=3)
    pipe = StreamPipeline(runner, tiny_components.scheduler, s, pos, neg)
    first = frames(1, 1)[0]
    out = pipe(first)
    noise = make_noise(3, 3, 4, SIZE // 8, SIZE // 8)
    ref = sequential_frame(runner, tiny_components.scheduler, first, (20, 32, 45), "self", 1.2, 1.0, noise, pos, neg, True)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=0)
    # an empty-buffer decode would be a flat colour; a real frame has structure
    assert out.std() > 0.01


@pytest.mark.parametrize("cfg", ["none", "full", "self", "initialize"])
@pytest.mark.parametrize("add_noise", [True, False])
def test_sequential_mode_has_no_latency_and_same_result(tiny_components, encoded, cfg, add_noise):
    pos, neg = encoded
    runner = CountingRunner(TorchRunner(tiny_components.unet, tiny_components.vae))
    t_list = T_LISTS[3]
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=t_list, cfg_type=cfg, guidance_scale=1.6,
                       delta=0.8, seed=11, add_noise=add_noise, denoising_batch=False)
    pipe = StreamPipeline(runner, tiny_components.scheduler, s, pos, neg)
    assert pipe.latency_frames == 0
    noise = make_noise(11, 3, 4, SIZE // 8, SIZE // 8)
    for x in frames(2, 1):
        ref = sequential_frame(runner.inner, tiny_components.scheduler, x, t_list, cfg, 1.6, 0.8, noise, pos, neg, add_noise)
        torch.testing.assert_close(pipe(x), ref, atol=2e-4, rtol=0)
    assert len(runner.unet_batches) == 2 * 3  # n calls per frame


@pytest.mark.parametrize("denoising_batch", [True, False])
def test_one_step_self_guidance_carries_the_residual_noise_like_the_reference(tiny_components, encoded, denoising_batch):
    """With one step the reference carries its residual noise from call to call
    (stock = N[0] + Delta of the previous call); reset() starts again from N[0]."""
    pos, neg = encoded
    runner = TorchRunner(tiny_components.unet, tiny_components.vae)
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(35,), cfg_type="self", guidance_scale=1.8,
                       delta=1.0, seed=6, denoising_batch=denoising_batch)
    pipe = StreamPipeline(runner, tiny_components.scheduler, s, pos, neg)
    noise = make_noise(6, 1, 4, SIZE // 8, SIZE // 8)
    clip = frames(3, 1)
    carry = None
    for x in clip:
        ref, carry_next = sequential_frame(runner, tiny_components.scheduler, x, (35,), "self", 1.8, 1.0, noise, pos,
                                           neg, True, carry=carry, with_delta=True)
        fresh = sequential_frame(runner, tiny_components.scheduler, x, (35,), "self", 1.8, 1.0, noise, pos, neg, True)
        out = pipe(x)
        torch.testing.assert_close(out, ref, atol=2e-4, rtol=0)
        if carry is not None:
            assert not torch.allclose(out, fresh, atol=1e-3)  # the carry changes the picture
        carry = carry_next
    pipe.reset()
    torch.testing.assert_close(pipe(clip[0]), sequential_frame(
        runner, tiny_components.scheduler, clip[0], (35,), "self", 1.8, 1.0, noise, pos, neg, True), atol=2e-4, rtol=0)
