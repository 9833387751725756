"""Model runners: the three network calls the pipeline makes, behind one small interface.

The pipeline never calls diffusers modules directly; it calls a :class:`ModelRunner`. The eager
torch runner lives here; ONNX Runtime and TensorRT runners (``stream_core.accel``) implement the
same calls with the same (static) shapes, so switching backend never changes the maths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch


def vae_scaling_factor(vae: Any) -> float:
    """The VAE's latent scaling factor (1.0 for TAESD / ``AutoencoderTiny``, 0.18215 for SD1.5's KL VAE)."""
    return float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)


def vae_encode(vae: Any, images: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """``images (F,3,H,W) in [-1,1] -> latents * scaling_factor``.

    The one VAE encode every backend uses (eager, compiled, the ONNX/TensorRT export graphs):
    TAESD returns ``.latents``; a KL VAE the mode of its latent distribution (deterministic).
    """
    out = vae.encode(images)
    lat = out.latents if hasattr(out, "latents") else out.latent_dist.mode()
    return lat * scaling_factor


def vae_decode(vae: Any, latents: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """``scaled latents -> images in [-1, 1]`` (not clamped: the pipeline clamps). See :func:`vae_encode`."""
    return vae.decode(latents / scaling_factor, return_dict=False)[0]


def controlnet_residuals(model: Any, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                         cond: torch.Tensor, scale: torch.Tensor) -> list[torch.Tensor]:
    """One ControlNet evaluation: its down-block residuals then its mid-block residual, times
    ``scale`` (a 0-dim tensor, so a live change needs no new graph). Every backend uses this."""
    down, mid = model(latents, timesteps, encoder_hidden_states=text_embeds, controlnet_cond=cond,
                      conditioning_scale=1.0, return_dict=False)
    return [r * scale for r in (*down, mid)]


def unet_with_residuals(unet: Any, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                        residuals: Sequence[torch.Tensor]) -> torch.Tensor:
    """The U-Net with ControlNet residuals added to its skip connections (down..., mid)."""
    res = list(residuals)
    return unet(latents, timesteps, encoder_hidden_states=text_embeds, down_block_additional_residuals=res[:-1],
                mid_block_additional_residual=res[-1], return_dict=False)[0]


@runtime_checkable
class ModelRunner(Protocol):
    """What the pipeline needs from the networks.

    * ``unet(latents (B,4,h,w), timesteps (B,) long, text_embeds (B,L,D)) -> eps (B,4,h,w)``
    * ``encode(images (F,3,H,W) in [-1,1]) -> latents (F,4,H/8,W/8)``, already multiplied by the
      VAE's scaling factor.
    * ``decode(latents) -> images in [-1,1]``; takes scaled latents (divides by the factor).

    Runners that drive ControlNets (``controlnet_count > 0``) also have
    ``controlnet(index, latents, timesteps, text_embeds, cond (B,3,H,W) in [0,1], scale 0-dim)
    -> residuals`` (the down-block residuals then the mid-block one, already scaled) and
    ``unet_residuals(latents, timesteps, text_embeds, residuals) -> eps``. A runner with every
    ControlNet inside its U-Net graph has ``unet_controlled(latents, timesteps, text_embeds, conds,
    scales) -> eps`` instead (one entry per ControlNet, None for an inactive one), which the
    pipeline then calls once per U-Net evaluation.
    """

    device: torch.device
    dtype: torch.dtype

    def unet(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor: ...

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class TorchRunner:
    """Eager PyTorch execution of diffusers' ``UNet2DConditionModel`` and a VAE.

    Works with ``AutoencoderTiny`` (TAESD; ``.latents``) and ``AutoencoderKL`` (the mode of its
    latent distribution, so encoding is deterministic).
    """

    def __init__(self, unet: Any, vae: Any, controlnets: Sequence[Any] = ()) -> None:
        self.unet_model = unet
        self.vae = vae
        param = next(unet.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self.scaling_factor = vae_scaling_factor(vae)
        #: diffusers ``ControlNetModel`` objects, in config order
        self.controlnet_models = list(controlnets)

    @property
    def controlnet_count(self) -> int:
        return len(self.controlnet_models)

    @torch.inference_mode()
    def controlnet(self, index: int, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                   cond: torch.Tensor, scale: torch.Tensor) -> list[torch.Tensor]:
        return controlnet_residuals(self.controlnet_models[index], latents, timesteps, text_embeds, cond, scale)

    @torch.inference_mode()
    def unet_residuals(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                       residuals: Sequence[torch.Tensor]) -> torch.Tensor:
        return unet_with_residuals(self.unet_model, latents, timesteps, text_embeds, residuals)

    @torch.inference_mode()
    def unet(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        return self.unet_model(latents, timesteps, encoder_hidden_states=text_embeds, return_dict=False)[0]

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return vae_encode(self.vae, images, self.scaling_factor)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return vae_decode(self.vae, latents, self.scaling_factor)


class CountingRunner:
    """Wraps a runner and records the batch size of every U-Net call (tests, diagnostics)."""

    def __init__(self, inner: ModelRunner) -> None:
        self.inner = inner
        self.device = inner.device
        self.dtype = inner.dtype
        self.unet_batches: list[int] = []
        self.encode_batches: list[int] = []
        self.decode_batches: list[int] = []
        #: (ControlNet index, batch) of every ControlNet call
        self.controlnet_calls: list[tuple[int, int]] = []
        if hasattr(inner, "unet_controlled"):  # ControlNets inside the U-Net graph: one combined call
            self.unet_controlled = self._unet_controlled

    def _unet_controlled(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                         conds: Sequence[torch.Tensor | None], scales: Sequence[torch.Tensor | None]) -> torch.Tensor:
        self.unet_batches.append(int(latents.shape[0]))
        for k, c in enumerate(conds):
            if c is not None:
                self.controlnet_calls.append((k, int(latents.shape[0])))
        return self.inner.unet_controlled(latents, timesteps, text_embeds, conds, scales)

    @property
    def controlnet_count(self) -> int:
        return int(getattr(self.inner, "controlnet_count", 0))

    def controlnet(self, index: int, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                   cond: torch.Tensor, scale: torch.Tensor) -> list[torch.Tensor]:
        self.controlnet_calls.append((index, int(latents.shape[0])))
        return self.inner.controlnet(index, latents, timesteps, text_embeds, cond, scale)

    def unet_residuals(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                       residuals: Sequence[torch.Tensor]) -> torch.Tensor:
        self.unet_batches.append(int(latents.shape[0]))
        return self.inner.unet_residuals(latents, timesteps, text_embeds, residuals)

    def unet(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        self.unet_batches.append(int(latents.shape[0]))
        return self.inner.unet(latents, timesteps, text_embeds)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encode_batches.append(int(images.shape[0]))
        return self.inner.encode(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.decode_batches.append(int(latents.shape[0]))
        return self.inner.decode(latents)
