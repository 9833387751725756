"""Fixtures for the temporal tests: a private copy of the tiny U-Net per test (the bank installs
processors into the U-Net it runs), the prompt encoder, a slowly moving clip."""

from __future__ import annotations

import copy

import pytest
import torch

from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.prompts import PromptEncoder
from stream_core.runner import TorchRunner

SIZE = 64


@pytest.fixture(scope="module")
def enc(tiny_components):
    return PromptEncoder(tiny_components.tokenizer, tiny_components.text_encoder)


@pytest.fixture
def make(tiny_components, enc):
    """``make(**settings) -> StreamPipeline`` on its own copy of the tiny U-Net."""

    def build(cfg: str = "self", steps=(20, 32, 45), f: int = 1, **kw) -> StreamPipeline:
        unet = copy.deepcopy(tiny_components.unet)
        runner = TorchRunner(unet, tiny_components.vae)
        s = StreamSettings(width=SIZE, height=SIZE, t_index_list=steps, cfg_type=cfg, seed=4,
                           frame_buffer_size=f, guidance_scale=1.5, **kw)
        return StreamPipeline(runner, tiny_components.scheduler, s, enc.encode("a red fox"), enc.encode(""))

    return build


def clip(k: int, f: int = 1) -> torch.Tensor:
    """Frame ``k`` of a slowly moving pattern: (f, 3, SIZE, SIZE) in [-1, 1]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    frames = []
    for j in range(f):
        t = 0.15 * (k * f + j)
        r = torch.sin(6 * x + t) * torch.cos(4 * y - 0.5 * t)
        g = torch.sin(5 * y + 0.7 * t)
        b = torch.cos(3 * (x + y) - t)
        frames.append(torch.stack([r, g, b]))
    return torch.stack(frames).clamp(-1, 1)
