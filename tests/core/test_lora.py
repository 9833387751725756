"""Extra LoRAs (and an explicit LCM-LoRA) are fused into the real U-Net through diffusers + peft."""

from __future__ import annotations

import pytest
import torch

from stream_core.models import LoraSpec, ModelLoadError, ModelSpec, load_components


@pytest.fixture(scope="module")
def tiny_lora(tiny_model_dir, tmp_path_factory):
    """A random LoRA for the tiny U-Net's attention projections, saved in diffusers' format."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    out = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet))
    return out / "pytorch_lora_weights.safetensors"


def unet_delta(a, b) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.unet.parameters(), b.unet.parameters(), strict=True))


def test_lora_is_fused_with_its_scale(tiny_model_dir, tiny_components, tiny_lora):
    half = load_components(ModelSpec(model=str(tiny_model_dir), device="cpu", loras=[LoraSpec(str(tiny_lora), 0.5)]))
    full = load_components(ModelSpec(model=str(tiny_model_dir), device="cpu", loras=[LoraSpec(str(tiny_lora), 1.0)]))
    d_half, d_full = unet_delta(half, tiny_components), unet_delta(full, tiny_components)
    assert d_half > 1e-4  # the weights really changed
    assert d_full == pytest.approx(2 * d_half, rel=1e-3)  # and in proportion to the scale
    assert half.info["loras"] == [(str(tiny_lora), 0.5)]
    # fused: no peft layers left behind in the module tree
    assert not any("lora" in name for name, _ in full.unet.named_modules())
    x = torch.randn(1, 4, 8, 8)
    e = torch.randn(1, 77, 32)
    t = torch.tensor([500])
    assert not torch.allclose(full.unet(x, t, e).sample, tiny_components.unet(x, t, e).sample)


def test_explicit_lcm_lora_path_is_used(tiny_model_dir, tiny_components, tiny_lora):
    c = load_components(ModelSpec(model=str(tiny_model_dir), device="cpu", lcm_lora=str(tiny_lora)))
    assert c.info["lcm_lora"] == str(tiny_lora)
    assert unet_delta(c, tiny_components) > 1e-4


def test_broken_lora_file_is_a_clear_error(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="bad.safetensors"):
        load_components(ModelSpec(model=str(tiny_model_dir), device="cpu", loras=[LoraSpec(str(bad), 1.0)]))
