"""The real architectures the GPU benchmark and `doctor --gpu` build with random weights.

Built on the meta device (no memory, no weights): the parameter counts must be those of the
published models, so a typo in a config value cannot make the GPU figures describe another model.
"""

from __future__ import annotations

import logging

import pytest
import torch

from stream_core.archs import build_random_components


@pytest.mark.parametrize(
    ("arch", "unet_params", "text_params", "text_dim"),
    [
        ("sd-turbo", 865_910_724, 340_387_840, 1024),  # SD 2.1 U-Net, OpenCLIP ViT-H/14 text tower (23 layers)
        ("sd15", 859_520_964, 123_060_480, 768),  # SD 1.5 U-Net, CLIP ViT-L/14 text encoder
    ],
)
def test_real_architectures_have_the_published_sizes(tmp_path, caplog, arch, unet_params, text_params, text_dim):
    with caplog.at_level(logging.WARNING):
        c = build_random_components(arch, "meta", torch.float16, tmp_path / "tok")
    assert c.info["unet_params"] == unet_params
    assert sum(p.numel() for p in c.text_encoder.parameters()) == text_params
    assert c.unet.config.cross_attention_dim == c.text_encoder.config.hidden_size == text_dim
    assert 2_000_000 < sum(p.numel() for p in c.vae.parameters()) < 3_000_000  # TAESD, ~2.4 M
    assert c.unet.dtype == torch.float16 and c.unet.device.type == "meta"
    assert c.tokenizer("any text, even émoji 🎛")["input_ids"][-1] < c.text_encoder.config.vocab_size
    assert "model" not in c.info  # engine caches key random weights by their values, not a name
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # no noise in a self-test log


def test_unknown_architecture_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sd-turbo, sd15"):
        build_random_components("sdxl", "meta", torch.float16, tmp_path)
