"""Real Stable Diffusion architectures built from their public config values, with random weights.

Speed and memory do not depend on the weight values, so a GPU can be measured and self-tested
with these on a machine that has no weights and no network: ``bench/gpu.py`` and
``streambridge doctor --gpu`` use them. Pictures from them are noise.

* ``sd-turbo``: the SD 2.1 U-Net (stabilityai/sd-turbo) with the OpenCLIP ViT-H/14 text tower;
* ``sd15``: the SD 1.5 U-Net with the CLIP ViT-L/14 text encoder;
* both with TAESD (``AutoencoderTiny()`` defaults) and an LCM scheduler, like the daemon's default.

The tokenizer is the tiny byte-level one (any text encodes; ids stay inside the real vocabulary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from stream_core.models import Components

SD21_UNET: dict[str, Any] = {  # stabilityai/sd-turbo (= stable-diffusion-2-1 U-Net) unet/config.json
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024, "use_linear_projection": True,
    "norm_num_groups": 32, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
}
SD15_UNET: dict[str, Any] = {**SD21_UNET, "attention_head_dim": 8, "cross_attention_dim": 768,
                             "use_linear_projection": False}
CLIP_H_TEXT: dict[str, Any] = {  # OpenCLIP ViT-H/14 text tower as SD 2.x uses it (23 layers)
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 1024,
}
CLIP_L_TEXT: dict[str, Any] = {  # CLIP ViT-L/14 text encoder (SD 1.x)
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
}

#: architecture name -> (U-Net config, text encoder config)
ARCHS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "sd-turbo": (SD21_UNET, CLIP_H_TEXT),
    "sd15": (SD15_UNET, CLIP_L_TEXT),
}


def build_random_components(arch: str, device: torch.device | str, dtype: torch.dtype, tokenizer_dir: Path,
                            seed: int = 0) -> Components:
    """Random-weight components of ``arch`` (a key of :data:`ARCHS`), built directly on ``device``.

    ``tokenizer_dir`` receives the tiny tokenizer's files (a few kB).
    """
    from diffusers import AutoencoderTiny, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from stream_core.tiny import SCHEDULER_CONFIG, write_tiny_tokenizer

    if arch not in ARCHS:
        raise ValueError(f"arch should be one of {', '.join(ARCHS)} but is {arch!r}")
    device = torch.device(device)
    unet_cfg, text_cfg = ARCHS[arch]
    write_tiny_tokenizer(Path(tokenizer_dir))
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    import diffusers.utils.logging as dlog

    torch.manual_seed(seed)
    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # its note on casting with .to() concerns loading, not random weights
    try:
        with torch.device(device):
            unet = UNet2DConditionModel(**unet_cfg)
            text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
            vae = AutoencoderTiny()
        for m in (unet, text_encoder, vae):
            m.to(dtype=dtype).eval().requires_grad_(False)
    finally:
        dlog.set_verbosity(level)
    scheduler = LCMScheduler.from_config(SCHEDULER_CONFIG)
    # no "model"/"vae" source here: engine caches then key these weights by a hash of their values
    info = {
        "arch": arch, "source": f"random:{arch}", "vae_class": type(vae).__name__, "loras": [], "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "cross_attention_dim": int(unet.config.cross_attention_dim),
    }
    return Components(tokenizer, text_encoder, unet, vae, scheduler, device, dtype, info)
