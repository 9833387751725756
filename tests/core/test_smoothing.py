"""Temporal smoothing: an exponential moving average over output latents, outside the stream."""

from __future__ import annotations

import math

import pytest
import torch

from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.prompts import PromptEncoder
from stream_core.runner import TorchRunner

SIZE = 64


class DecodeRecorder(TorchRunner):
    """The torch runner, keeping a copy of every latent batch it decodes."""

    def __init__(self, unet, vae):
        super().__init__(unet, vae)
        self.decoded: list[torch.Tensor] = []

    def decode(self, latents):
        self.decoded.append(latents.clone())
        return super().decode(latents)


@pytest.fixture(scope="module")
def embeds(tiny_components):
    enc = PromptEncoder(tiny_components.tokenizer, tiny_components.text_encoder)
    return enc.encode("a red fox"), enc.encode("")


def make(tiny_components, embeds, smoothing=0.0, f=1):
    runner = DecodeRecorder(tiny_components.unet, tiny_components.vae)
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(20, 32, 45), cfg_type="self", seed=4,
                       frame_buffer_size=f, smoothing=smoothing)
    return StreamPipeline(runner, tiny_components.scheduler, s, *embeds)


def frames(n, f=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand((f, 3, SIZE, SIZE), generator=g) * 2 - 1 for _ in range(n)]


def test_output_latents_are_an_ema_of_the_unsmoothed_ones(tiny_components, embeds):
    raw, smooth = make(tiny_components, embeds), make(tiny_components, embeds, smoothing=0.6)
    for x in frames(5):
        raw(x)
        smooth(x)
    a, b = raw.runner.decoded, smooth.runner.decoded
    torch.testing.assert_close(b[0], a[0])  # nothing to blend with yet
    for k in range(1, 5):
        torch.testing.assert_close(b[k], 0.4 * a[k] + 0.6 * b[k - 1], atol=1e-6, rtol=0)


def test_frame_buffer_rows_are_smoothed_in_order(tiny_components, embeds):
    raw, smooth = make(tiny_components, embeds, f=2), make(tiny_components, embeds, smoothing=0.5, f=2)
    for x in frames(3, f=2):
        raw(x)
        smooth(x)
    a = torch.cat(raw.runner.decoded)
    b = torch.cat(smooth.runner.decoded)
    for j in range(1, a.shape[0]):
        torch.testing.assert_close(b[j], 0.5 * a[j] + 0.5 * b[j - 1], atol=1e-6, rtol=0)


def test_turning_it_on_blends_with_the_real_last_frame_and_leaves_the_stream_alone(tiny_components, embeds):
    raw, live = make(tiny_components, embeds), make(tiny_components, embeds)
    clip = frames(5)
    for x in clip[:3]:
        raw(x)
        live(x)
    live.set_smoothing(0.5)
    for x in clip[3:]:
        raw(x)
        live(x)
    a, b = raw.runner.decoded, live.runner.decoded
    torch.testing.assert_close(b[3], 0.5 * a[3] + 0.5 * a[2], atol=1e-6, rtol=0)
    torch.testing.assert_close(live._x_buffer, raw._x_buffer)  # the denoising stream is untouched


def test_smoothing_reduces_frame_to_frame_change(tiny_components, embeds):
    clip = frames(8, seed=3)

    def flicker(s):
        pipe = make(tiny_components, embeds, smoothing=s)
        outs = [pipe(x) for x in clip]
        return sum(float((b - a).abs().mean()) for a, b in zip(outs[2:], outs[3:], strict=False))

    off, on = flicker(0.0), flicker(0.8)
    assert on < 0.6 * off, (off, on)


def test_reset_forgets_the_previous_latent(tiny_components, embeds):
    pipe = make(tiny_components, embeds, smoothing=0.9)
    clip = frames(3)
    pipe(clip[0])
    pipe.reset()
    pipe(clip[1])
    fresh = make(tiny_components, embeds, smoothing=0.9)
    fresh(clip[1])
    torch.testing.assert_close(pipe.runner.decoded[-1], fresh.runner.decoded[-1])


@pytest.mark.parametrize("bad", [-0.1, 0.96, 1.0, math.nan, "0.5"])
def test_bad_values_are_refused(tiny_components, embeds, bad):
    pipe = make(tiny_components, embeds)
    with pytest.raises(ValueError, match="smoothing"):
        pipe.set_smoothing(bad)
    assert pipe.smoothing == 0.0
    with pytest.raises(ValueError, match="smoothing"):
        StreamSettings(smoothing=bad).check()
