"""Optional FP8 (e4m3) matrix multiplies for the U-Net's linear layers (``compile`` option ``fp8``).

Each ``nn.Linear`` of the U-Net whose sizes are multiples of 16 (attention projections, feed-forward,
time embedding) is replaced by :class:`Fp8Linear`: its weight is stored once as float8 e4m3 with a
per-tensor scale; each call scales the activations by their own absolute maximum (computed on the
device: no host synchronisation) and multiplies with ``torch._scaled_mm``, which runs FP8 tensor
cores on NVIDIA Ada (sm89) and Hopper (sm90) GPUs. Convolutions stay in fp16.

Only where it measures faster, and never silently: asking for it on another device is a
:class:`~stream_core.accel.errors.BackendUnavailableError`. :func:`fp8_psnr` reports its error
against the fp16 pipeline (PSNR, dB) for the benchmark.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from stream_core.accel.errors import BackendUnavailableError

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


def fp8_support(device: torch.device) -> str | None:
    """None when FP8 matmuls run on ``device``; otherwise why not."""
    if device.type != "cuda":
        return f"FP8 needs an NVIDIA GPU with compute capability 8.9 or newer (Ada, Hopper), but the model is on {device}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        name = torch.cuda.get_device_name(device)
        return f"FP8 needs compute capability 8.9 or newer (Ada, Hopper); {name} is sm{major}{minor}"
    return None


def require_fp8(device: torch.device) -> None:
    why = fp8_support(device)
    if why is not None:
        raise BackendUnavailableError(f"{why}. Turn the fp8 option off.")


class Fp8Linear(nn.Module):
    """``nn.Linear`` with an FP8 weight (per-tensor scale) and dynamically scaled FP8 activations."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax().clamp(min=1e-12) / FP8_MAX
        self.register_buffer("weight_fp8", (w / scale).to(FP8))
        self.register_buffer("weight_scale", scale.reshape(()))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        x_scale = x2.abs().amax().float().clamp(min=1e-12) / FP8_MAX
        x8 = (x2.float() / x_scale).to(FP8)
        out = torch._scaled_mm(x8, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale,
                               out_dtype=x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)


def quantize_linears(module: nn.Module) -> int:
    """Replace every eligible ``nn.Linear`` inside ``module`` by :class:`Fp8Linear`, in place.
    Returns how many were replaced (sizes must be multiples of 16 for the FP8 kernels)."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
            setattr(module, name, Fp8Linear(child))
            count += 1
        else:
            count += quantize_linears(child)
    return count


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) between two image batches in [-1, 1] (peak-to-peak 2)."""
    mse = torch.mean((a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)


def fp8_psnr(components: Any, settings: Any, *, prompt_embeds: torch.Tensor, frames: int = 8, seed: int = 0,
             check_device: bool = True) -> dict[str, float]:
    """Run the same frames through the pipeline with the U-Net as loaded (fp16) and with FP8
    linears; return ``{"psnr_db": mean PSNR of the outputs, "min_psnr_db": worst frame, "layers": n}``.

    Leaves ``components`` unchanged (the FP8 U-Net is a copy). ``check_device=False`` lets the
    maths run on a device without FP8 kernels (tests on the CPU).
    """
    from stream_core.pipeline import StreamPipeline
    from stream_core.runner import TorchRunner

    if check_device:
        require_fp8(components.device)
    unet8 = copy.deepcopy(components.unet)
    layers = quantize_linears(unet8)
    ref = StreamPipeline(TorchRunner(components.unet, components.vae), components.scheduler, settings, prompt_embeds)
    low = StreamPipeline(TorchRunner(unet8, components.vae), components.scheduler, settings, prompt_embeds)
    g = torch.Generator("cpu").manual_seed(seed)
    f = settings.frame_buffer_size
    values = []
    for _ in range(frames):
        x = (torch.rand((f, 3, settings.height, settings.width), generator=g) * 2 - 1)
        x = x.to(components.device, components.dtype)
        values.append(psnr(ref(x), low(x)))
    return {"psnr_db": sum(values) / len(values), "min_psnr_db": min(values), "layers": float(layers)}
