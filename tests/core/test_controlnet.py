"""ControlNets inside the stream batch: every frame leaving the stream equals an independent
per-frame sequential computation in which every U-Net evaluation gets the residuals of every
ControlNet computed from that frame's own control image and that evaluation's text embedding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from stream_core.controlnet import ControlNetSpec, LoadedControlNet
from stream_core.pipeline import StreamPipeline, StreamSettings, make_noise
from stream_core.prompts import PromptEncoder
from stream_core.runner import CountingRunner, TorchRunner
from stream_core.schedule import step_scalars
from tests.core.controlnet_fixtures import *  # noqa: F403

SIZE = 64
T_LISTS = {1: (30,), 2: (32, 45), 3: (20, 32, 45)}
G, DELTA = 1.6, 0.8


class LatentRunner(CountingRunner):
    """Records the latents handed to the decoder (the output before the VAE, which on the tiny
    model squeezes differences) and the scale of every ControlNet call."""

    def __init__(self, inner):
        super().__init__(inner)
        self.decoded: list[torch.Tensor] = []
        self.scales: list[tuple[int, float]] = []

    def decode(self, latents):
        self.decoded.append(latents.clone())
        return super().decode(latents)

    def controlnet(self, index, latents, timesteps, text_embeds, cond, scale):
        self.scales.append((index, float(scale)))
        return super().controlnet(index, latents, timesteps, text_embeds, cond, scale)


def clip(count: int, f: int, seed: int) -> list[torch.Tensor]:
    """Frames in [0, 1] with coarse structure (random 4x4 blocks), each frame different."""
    g = torch.Generator().manual_seed(seed)
    coarse = [torch.rand((f, 3, 4, 4), generator=g) for _ in range(count)]
    return [torch.nn.functional.interpolate(c, size=(SIZE, SIZE), mode="nearest") for c in coarse]


@pytest.fixture(scope="module")
def encoded(tiny_components):
    enc = PromptEncoder(tiny_components.tokenizer, tiny_components.text_encoder)
    return enc.encode("a neon city"), enc.encode("blurry")


def units(components, which=(0,), scales=None):
    out = []
    for i, k in enumerate(which):
        lc = components.controlnets[k]
        spec = lc.spec if scales is None else ControlNetSpec(lc.spec.model, scales[i], lc.spec.preprocessor,
                                                               True, lc.spec.depth_model)
        out.append(LoadedControlNet(spec, lc.model, lc.depth))
    return out


def make_pipe(components, encoded, cfg, n, f=1, which=(0,), scales=None, add_noise=True, **kw):
    pos, neg = encoded
    us = units(components, which, scales)
    runner = LatentRunner(TorchRunner(components.unet, components.vae, [u.model for u in us]))
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=T_LISTS[n], frame_buffer_size=f, cfg_type=cfg,
                       guidance_scale=G, delta=DELTA, seed=11, add_noise=add_noise, **kw)
    return StreamPipeline(runner, components.scheduler, s, pos, neg, controlnets=us)


def reference_x0(components, image, controls, t_list, cfg, noise, pos, neg, add_noise=True, carry=None):
    """One frame through all steps from the formulas, calling diffusers' models directly: every
    U-Net evaluation adds the residuals of every ControlNet ((model, control image, scale)),
    evaluated on the same latents, timestep and text embedding."""
    unet, vae = components.unet, components.vae

    def eps(x, t, text):
        down = mid = None
        for model, image01, scale in controls:
            d, m = model(x, t, encoder_hidden_states=text, controlnet_cond=image01, conditioning_scale=scale,
                         return_dict=False)
            down = list(d) if down is None else [a + b for a, b in zip(down, d, strict=True)]
            mid = m if mid is None else mid + m
        if down is None:
            return unet(x, t, encoder_hidden_states=text, return_dict=False)[0]
        return unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid, return_dict=False)[0]

    sc = step_scalars(components.scheduler, t_list)
    a, b, cs, co = (v.float() for v in (sc.alpha, sc.beta, sc.c_skip, sc.c_out))
    z = vae.encode(image * 2 - 1).latents * float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    x = a[0] * z + b[0] * noise[0:1]
    stock = noise[0:1].clone() if carry is None else noise[0:1] + carry
    if cfg == "initialize":
        stock = eps(x, sc.timesteps[0:1], neg)
    x0h = dx = None
    for i in range(len(t_list)):
        t = sc.timesteps[i : i + 1]
        ec = eps(x, t, pos)
        if cfg == "none":
            e = ec
        elif cfg == "full":
            eu = eps(x, t, neg)
            e = eu + G * (ec - eu)
        else:
            e = DELTA * stock + G * (ec - DELTA * stock)
        x0h = co[i] * (x - b[i] * e) / a[i] + cs[i] * x
        bs = b[i] * stock
        dx = co[i] * (bs - b[i] * e) / a[i] + cs[i] * bs
        if i < len(t_list) - 1:
            stock = (a[i + 1] / b[i + 1]) * dx + (noise[i + 1 : i + 2] if add_noise else 0)
            x = a[i + 1] * x0h + (b[i + 1] * noise[i + 1 : i + 2] if add_noise else 0)
    return x0h, dx


CASES = list(itertools.product(["none", "full", "self", "initialize"], [1, 2, 3]))


@torch.inference_mode()
@pytest.mark.parametrize("cfg,n", CASES)
def test_stream_with_controlnet_equals_sequential(cn_components, encoded, cfg, n):
    pos, neg = encoded
    pipe = make_pipe(cn_components, encoded, cfg, n, which=(0,), scales=(0.9,))
    runner = pipe.runner
    calls = n + 2
    inputs = clip(calls, 1, seed=3)
    controls = clip(calls, 1, seed=4)  # every frame has its own control image
    for x, c in zip(inputs, controls, strict=True):
        pipe(x * 2 - 1, [c])
    # one ControlNet call per U-Net call, on the whole (static) batch
    assert len(runner.controlnet_calls) == len(runner.unet_batches) == n - 1 + calls
    assert {b for _, b in runner.controlnet_calls} == {pipe.unet_batch}
    noise = make_noise(11, n, 4, SIZE // 8, SIZE // 8)
    model = cn_components.controlnets[0].model
    carry = None
    for k in range(calls):
        src = max(0, k - (n - 1))
        ref, dx = reference_x0(cn_components, inputs[src], [(model, controls[src], 0.9)], T_LISTS[n], cfg, noise,
                               pos, neg, carry=carry)
        if n == 1 and cfg == "self":
            carry = dx
        torch.testing.assert_close(runner.decoded[k], ref, atol=2e-4, rtol=0)
        if n > 1 and k >= n - 1:
            # the rows must not share the newest frame's control image
            wrong, _ = reference_x0(cn_components, inputs[src], [(model, controls[k], 0.9)], T_LISTS[n], cfg,
                                    noise, pos, neg)
            assert (runner.decoded[k] - wrong).abs().max() > 2e-2


@torch.inference_mode()
@pytest.mark.parametrize("cfg", ["full", "initialize"])
def test_two_controlnets_frame_buffer_two_and_input_as_control(cn_components, encoded, cfg):
    """Residuals of several ControlNets add; f = 2 frames per call; a None entry uses the input."""
    pos, neg = encoded
    n, f = 2, 2
    pipe = make_pipe(cn_components, encoded, cfg, n, f=f, which=(0, 1), scales=(0.8, 0.6))
    runner = pipe.runner
    inputs, controls = clip(3, f, seed=5), clip(3, f, seed=6)
    for x, c in zip(inputs, controls, strict=True):
        pipe(x * 2 - 1, [c, None])
    assert [i for i, _ in runner.controlnet_calls] == [0, 1] * 4
    noise = make_noise(11, n, 4, SIZE // 8, SIZE // 8)
    m0, m1 = cn_components.controlnets[0].model, cn_components.controlnets[1].model
    for k in range(3):
        src = max(0, k - 1)
        for j in range(f):
            ctl = [(m0, controls[src][j : j + 1], 0.8), (m1, inputs[src][j : j + 1], 0.6)]
            ref, _ = reference_x0(cn_components, inputs[src][j : j + 1], ctl, T_LISTS[n], cfg, noise, pos, neg)
            torch.testing.assert_close(runner.decoded[k][j : j + 1], ref, atol=2e-4, rtol=0)


@torch.inference_mode()
@pytest.mark.parametrize("add_noise", [True, False])
def test_sequential_denoising_with_controlnet(cn_components, encoded, add_noise):
    pos, neg = encoded
    pipe = make_pipe(cn_components, encoded, "self", 3, add_noise=add_noise, denoising_batch=False)
    noise = make_noise(11, 3, 4, SIZE // 8, SIZE // 8)
    model = cn_components.controlnets[0].model
    for x, c in zip(clip(2, 1, 8), clip(2, 1, 9), strict=True):
        pipe(x * 2 - 1, [c])
        ref, _ = reference_x0(cn_components, x, [(model, c, 1.0)], T_LISTS[3], "self", noise, pos, neg,
                              add_noise=add_noise)
        torch.testing.assert_close(pipe.runner.decoded[-1], ref, atol=2e-4, rtol=0)


@torch.inference_mode()
@pytest.mark.parametrize("cfg", ["full", "self"])
def test_scale_zero_and_disabled_equal_no_controlnet_and_make_no_call(cn_components, encoded, cfg):
    plain = make_pipe(cn_components, encoded, cfg, 2, which=())
    zero = make_pipe(cn_components, encoded, cfg, 2, scales=(0.0,))
    off = make_pipe(cn_components, encoded, cfg, 2)
    off.set_controlnet(0, enabled=False)
    inputs, controls = clip(3, 1, 1), clip(3, 1, 2)
    for x, c in zip(inputs, controls, strict=True):
        a = plain(x * 2 - 1)
        assert torch.equal(zero(x * 2 - 1, [c]), a)
        assert torch.equal(off(x * 2 - 1, [c]), a)
    assert zero.runner.controlnet_calls == off.runner.controlnet_calls == []
    assert zero.runner.unet_batches == plain.runner.unet_batches


@torch.inference_mode()
def test_live_scale_change_applies_on_the_next_frame(cn_components, encoded):
    pipe = make_pipe(cn_components, encoded, "self", 2)
    same = make_pipe(cn_components, encoded, "self", 2)
    inputs, controls = clip(5, 1, 3), clip(5, 1, 4)
    for k, (x, c) in enumerate(zip(inputs, controls, strict=True)):
        if k == 3:
            pipe.set_controlnet(0, scale=0.4)
            assert pipe.controlnet_scales == (0.4,)
        out, ref = pipe(x * 2 - 1, [c]), same(x * 2 - 1, [c])
        if k < 3:
            assert torch.equal(out, ref)
        else:
            assert not torch.equal(pipe.runner.decoded[k], same.runner.decoded[k])
    assert [s for _, s in pipe.runner.scales] == pytest.approx([1.0] * 4 + [0.4] * 2)
    pipe.set_controlnet(0, scale=0.0)
    calls = len(pipe.runner.controlnet_calls)
    pipe(inputs[0] * 2 - 1, [controls[0]])
    assert len(pipe.runner.controlnet_calls) == calls  # scale 0: no call from the next frame on
    assert pipe.controlnet_active == ()


@torch.inference_mode()
def test_turned_on_again_refills_its_rows_from_the_next_frame(cn_components, encoded):
    pipe = make_pipe(cn_components, encoded, "none", 3)
    inputs, controls = clip(4, 1, 3), clip(4, 1, 4)
    pipe.set_controlnet(0, enabled=False)
    pipe(inputs[0] * 2 - 1, [controls[0]])
    pipe.set_controlnet(0, enabled=True)
    pipe(inputs[1] * 2 - 1, [controls[1]])
    rows = pipe._cn_rows[0]
    for i in range(3):
        torch.testing.assert_close(rows[i : i + 1], controls[1])


@torch.inference_mode()
def test_bad_live_values_and_bad_control_are_refused_and_change_nothing(cn_components, encoded):
    pipe = make_pipe(cn_components, encoded, "self", 2, which=(0, 1), scales=(1.0, 0.5))
    for kwargs in ({"scale": -0.1}, {"scale": float("nan")}, {"scale": float("inf")}, {"scale": True},
                   {"enabled": "yes"}):
        with pytest.raises(ValueError):
            pipe.set_controlnet(1, **kwargs)
    for index in (-1, 2, 1.0, True):
        with pytest.raises(ValueError, match="index"):
            pipe.set_controlnet(index, scale=0.3)
    assert pipe.controlnet_scales == (1.0, 0.5) and pipe.controlnet_enabled == (True, True)
    x = clip(1, 1, 1)[0] * 2 - 1
    with pytest.raises(ValueError, match="one entry per ControlNet"):
        pipe(x, [None])
    with pytest.raises(ValueError, match=r"shaped \(1, 3, H, W\)"):
        pipe(x, [torch.rand(1, 1, SIZE, SIZE), None])
    with pytest.raises(ValueError, match="txt2img"):
        pipe(None)
    assert pipe.calls == 0 and not pipe.primed and pipe.runner.controlnet_calls == []


@torch.inference_mode()
def test_canny_needs_its_edge_image(cn_components, encoded):
    pos, neg = encoded
    lc = cn_components.controlnets[0]
    canny = LoadedControlNet(ControlNetSpec(lc.spec.model, 1.0, "canny"), lc.model)
    runner = TorchRunner(cn_components.unet, cn_components.vae, [lc.model])
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(32, 45), cfg_type="self")
    pipe = StreamPipeline(runner, cn_components.scheduler, s, pos, neg, controlnets=[canny])
    x = clip(1, 1, 1)[0] * 2 - 1
    with pytest.raises(ValueError, match="canny"):
        pipe(x)
    with pytest.raises(ValueError, match="canny"):
        pipe(x, [None])
    pipe(x, [torch.rand(1, 3, 32, 48)])  # any size: resized on the device
    assert pipe.calls == 1


@torch.inference_mode()
def test_reset_drops_the_carried_control_images(cn_components, encoded):
    pipe = make_pipe(cn_components, encoded, "self", 3)
    fresh = make_pipe(cn_components, encoded, "self", 3)
    inputs, controls = clip(3, 1, 3), clip(3, 1, 4)
    for x, c in zip(inputs, controls, strict=True):
        pipe(x * 2 - 1, [c])
    pipe.reset()
    assert pipe._cn_rows[0].abs().sum() == 0
    torch.testing.assert_close(pipe(inputs[2] * 2 - 1, [controls[2]]), fresh(inputs[2] * 2 - 1, [controls[2]]),
                               atol=0, rtol=0)


def test_runner_and_controlnet_count_must_match(cn_components, encoded):
    pos, neg = encoded
    runner = TorchRunner(cn_components.unet, cn_components.vae)
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(32, 45))
    with pytest.raises(ValueError, match="runner drives 0"):
        StreamPipeline(runner, cn_components.scheduler, s, pos, neg, controlnets=units(cn_components))


# ---------------------------------------------------------------------- depth preprocessor
@torch.inference_mode()
def test_depth_preprocessor_runs_the_depth_model_on_the_control_frame(cn_components, encoded):
    pos, neg = encoded
    depth_unit = cn_components.controlnets[2]
    assert depth_unit.spec.preprocessor == "depth" and depth_unit.depth is not None
    runner = LatentRunner(TorchRunner(cn_components.unet, cn_components.vae, [depth_unit.model]))
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(32, 45), cfg_type="self", seed=11,
                       guidance_scale=G, delta=DELTA)
    pipe = StreamPipeline(runner, cn_components.scheduler, s, pos, neg, controlnets=[depth_unit])
    x, c = clip(1, 1, 3)[0], clip(1, 1, 4)[0]
    pipe(x * 2 - 1, [c])
    d = depth_unit.depth(c)
    assert d.shape == (1, 3, SIZE, SIZE) and float(d.min()) == 0.0 and float(d.max()) == pytest.approx(1.0)
    assert torch.equal(d[:, 0], d[:, 2])
    torch.testing.assert_close(pipe._cn_rows[0][:1], d)
    noise = make_noise(11, 2, 4, SIZE // 8, SIZE // 8)
    ref, _ = reference_x0(cn_components, x, [(depth_unit.model, d, 0.9)], (32, 45), "self", noise, pos, neg)
    torch.testing.assert_close(runner.decoded[0], ref, atol=2e-4, rtol=0)
    # None: the depth of the input frame itself
    pipe.reset()
    pipe(x * 2 - 1, [None])
    torch.testing.assert_close(pipe._cn_rows[0][:1], depth_unit.depth(x), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- loading and the engine
def test_load_components_with_controlnets_and_missing_model_errors(tiny_model_dir, tiny_controlnet_dir, tmp_path):
    from stream_core.models import ModelNotFoundError, ModelSpec, load_components

    spec = ModelSpec(model=str(tiny_model_dir), device="cpu", dtype="float32")
    missing = tmp_path / "no-such-controlnet"
    with pytest.raises(ModelNotFoundError, match="no-such-controlnet"):
        load_components(spec, controlnets=[ControlNetSpec(str(missing))])
    with pytest.raises(ModelNotFoundError, match=r"lllyasviel/sd-controlnet-depth.*streambridge models fetch"):
        load_components(spec, controlnets=[ControlNetSpec("lllyasviel/sd-controlnet-depth")])
    with pytest.raises(ModelNotFoundError, match="depth model org/no-depth"):
        load_components(spec, controlnets=[ControlNetSpec(str(tiny_controlnet_dir), preprocessor="depth",
                                                          depth_model="org/no-depth")])
    with pytest.raises(ValueError, match="needs depth_model"):
        ControlNetSpec(str(tiny_controlnet_dir), preprocessor="depth").check()
    with pytest.raises(ValueError, match="preprocessor should be one of"):
        ControlNetSpec(str(tiny_controlnet_dir), preprocessor="hed").check()


def test_a_controlnet_of_another_family_is_refused(tiny_components, tmp_path):
    from diffusers import ControlNetModel

    from stream_core.models import ModelLoadError, with_controlnets

    other = ControlNetModel(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                            cross_attention_dim=16, attention_head_dim=8, norm_num_groups=32, layers_per_block=1,
                            conditioning_embedding_out_channels=(8, 16))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ModelLoadError, match="cross_attention_dim is 16 but the U-Net's is 32"):
        with_controlnets(tiny_components, [ControlNetSpec(str(tmp_path / "other"))])


def test_engine_takes_uint8_control_frames_of_any_size(cn_components):
    from stream_core.engine import StreamEngine

    specs = [lc.spec for lc in cn_components.controlnets[:2]]
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(32, 45), cfg_type="self", seed=2)
    engine = StreamEngine(cn_components, s, "a cat", controlnets=specs)
    assert engine.pipeline.controlnet_count == 2
    assert engine.pipeline.controlnet_scales == (1.0, 0.7)
    # already loaded models are reused, not loaded again
    assert engine.components.controlnets[0].model is cn_components.controlnets[0].model
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    ctl = rng.integers(0, 256, (1, 40, 100, 3), dtype=np.uint8)
    out = engine.process(frame, control=[ctl, None])
    assert out.shape == (1, SIZE, SIZE, 3) and out.dtype == np.uint8
    rows = engine.pipeline._cn_rows
    torch.testing.assert_close(rows[1][:1], torch.from_numpy(frame).permute(0, 3, 1, 2).float() / 255, atol=1e-6,
                               rtol=0)
    assert rows[0].shape == (2, 3, SIZE, SIZE) and 0 <= float(rows[0].min()) and float(rows[0].max()) <= 1
    with pytest.raises(ValueError, match="one entry per ControlNet"):
        engine.process(frame, control=[ctl])
    with pytest.raises(ValueError, match="uint8"):
        engine.process(frame, control=[ctl.astype(np.float32), None])
    with pytest.raises(ValueError, match="2 frame"):
        engine.process(frame, control=[np.concatenate([ctl, ctl]), None])
    plain = StreamEngine(cn_components, s, "a cat", controlnets=[])
    assert plain.pipeline.controlnet_count == 0 and plain.runner.controlnet_count == 0
