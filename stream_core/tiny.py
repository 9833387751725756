"""A tiny random Stable-Diffusion-style model, written offline in seconds.

It has every real component (CLIP tokenizer, CLIP text encoder, U-Net, TAESD, LCM scheduler) in
diffusers' folder layout, so demos and tests run the real loading and inference code with no
download. Only the weights are random: its pictures look like coloured noise.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_TEXT_DIM = 32

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "original_inference_steps": 50,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": True,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_tiny_tokenizer(folder: Path) -> int:
    """Write a byte-level CLIP BPE tokenizer (vocab.json + merges.txt). Returns its size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("o", "n</w>"), ("e", "r")]
    for a, b in merges:
        vocab_list.append(a + b)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges_txt, encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
        ),
        encoding="utf-8",
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "do_lower_case": True,
            }
        ),
        encoding="utf-8",
    )
    return len(vocab)


def make_tiny_model(folder: str | Path, seed: int = 0, size: str = "tiny") -> Path:
    """Write a random diffusers-format SD model to ``folder`` and return its path.

    ``size="tiny"`` (0.8 M-parameter U-Net, the default for tests and the demo) or ``"small"``
    (12.5 M, for benchmarks where compute should dominate call overhead).
    """
    import torch
    from diffusers import AutoencoderTiny, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    write_tiny_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)

    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=TINY_TEXT_DIM,
    )
    text_encoder = CLIPTextModel(text_config).eval()

    channels = (32, 64) if size == "tiny" else (64, 128, 256)
    if size == "tiny":
        down = ("CrossAttnDownBlock2D", "DownBlock2D")
        up = ("UpBlock2D", "CrossAttnUpBlock2D")
    elif size == "small":
        down = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
        up = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    else:
        raise ValueError(f"size must be 'tiny' or 'small', not {size!r}")
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()
    vae = AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16, 16),
        decoder_block_out_channels=(16, 16, 16, 16),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    ).eval()
    scheduler = LCMScheduler.from_config(SCHEDULER_CONFIG)

    tokenizer.save_pretrained(tok_dir)
    text_encoder.save_pretrained(out / "text_encoder")
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    scheduler.save_pretrained(out / "scheduler")
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "LCMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderTiny"],
    }
    (out / "model_index.json").write_text(json.dumps(model_index, indent=2), encoding="utf-8")
    return out


def make_tiny_controlnet(folder: str | Path, model: str | Path, seed: int = 1) -> Path:
    """Write a random ControlNet matching the U-Net of the diffusers model at ``model`` (diffusers'
    ``ControlNetModel``, the SD1.5 ControlNet architecture at the U-Net's size) to ``folder``.

    A fresh ControlNet's output convolutions are zero (it adds nothing until trained); here they
    are random too, so that the control image really changes the result."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(model) / "unet", local_files_only=True)
    torch.manual_seed(seed)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32),
                                   load_weights_from_unet=True)
    _randomise_zero_convs(cn, seed)
    out = Path(folder)
    cn.eval().save_pretrained(out)
    return out


def _randomise_zero_convs(cn: object, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed + 1000)
    emb = cn.controlnet_cond_embedding  # type: ignore[attr-defined]
    # the conditioning embedding with a gain that keeps its activations from fading (so that the
    # control image, not only its mean, reaches the residuals), then the zero convolutions
    convs = [(emb.conv_in, 1.5), *((b, 1.5) for b in emb.blocks), (emb.conv_out, 1.5),
             *((c, 0.3) for c in cn.controlnet_down_blocks), (cn.controlnet_mid_block, 0.3)]  # type: ignore[attr-defined]
    with torch.no_grad():
        for conv, gain in convs:
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * gain / fan_in**0.5)
            if conv.bias is not None:
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.01)


def make_tiny_depth_model(folder: str | Path, seed: int = 2) -> Path:
    """Write a random transformers depth-estimation model (DPT, 0.1 M parameters, 32 px input)
    with its ``preprocessor_config.json`` to ``folder``."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation

    torch.manual_seed(seed)
    cfg = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
                    image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                    neck_hidden_sizes=[8, 16, 16, 16], fusion_hidden_size=16, is_hybrid=False,
                    reassemble_factors=[4, 2, 1, 0.5])
    model = DPTForDepthEstimation(cfg).eval()
    # default initialisation leaves a random DPT's prediction near 1e-9 everywhere; a fan-in
    # scaled one gives a depth map that really depends on the picture
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * 1.5 / fan_in**0.5)
                if mod.bias is not None:
                    mod.bias.zero_()
    out = Path(folder)
    model.save_pretrained(out)
    processor = {
        "image_processor_type": "DPTImageProcessor",
        "do_resize": True,
        "size": {"height": 32, "width": 32},
        "keep_aspect_ratio": False,
        "ensure_multiple_of": 1,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2), encoding="utf-8")
    return out
