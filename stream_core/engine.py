"""A pipeline bundled with its prompt encoder and frame conversion: what render and the daemon drive.

Frames come and go as RGB uint8 numpy arrays (F, H, W, 3); the engine converts them to and from
the pipeline's (F, 3, H, W) tensors in [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from stream_core.models import Components
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.prompts import PromptEncoder
from stream_core.runner import ModelRunner, TorchRunner


def rgb_to_tensor(frames: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(F, H, W, 3) or (H, W, 3) uint8 -> (F, 3, H, W) in [-1, 1] on ``device``."""
    if frames.ndim == 3:
        frames = frames[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames shaped (F, H, W, 3), got {frames.dtype} {frames.shape}")
    t = torch.from_numpy(np.ascontiguousarray(frames)).to(device, non_blocking=True)
    t = t.permute(0, 3, 1, 2).to(dtype)
    return t.mul_(2.0 / 255.0).sub_(1.0)


def tensor_to_rgb(images: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W, 3) uint8 on the CPU."""
    x = images.detach().float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round_()
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


class StreamEngine:
    """Components + runner + pipeline + prompt encoder, built once."""

    def __init__(
        self,
        components: Components,
        settings: StreamSettings,
        prompt: str,
        negative_prompt: str = "",
        runner: ModelRunner | None = None,
    ) -> None:
        self.components = components
        self.encoder = PromptEncoder(components.tokenizer, components.text_encoder)
        self.runner = runner or TorchRunner(components.unet, components.vae)
        pos = self.encoder.encode(prompt)
        neg = self.encoder.encode(negative_prompt)
        self.pipeline = StreamPipeline(self.runner, components.scheduler, settings, pos, neg)
        self.settings = settings
        self.output_finite = True

    def process(self, frames: np.ndarray | None) -> np.ndarray:
        """Run one stream call. ``frames``: (f, H, W, 3) uint8, or None for txt2img."""
        images = None
        if frames is not None:
            images = rgb_to_tensor(frames, self.runner.device, self.runner.dtype)
        out = self.pipeline(images)
        self.output_finite = bool(torch.isfinite(out).all())  # whether this output was finite
        return tensor_to_rgb(out)
