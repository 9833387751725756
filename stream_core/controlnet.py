"""ControlNets: their specification, the depth preprocessor, and the checks shared by loader and pipeline.

A ControlNet adds residuals to the U-Net's skip connections, computed from a control image (RGB
in [0, 1] at the output's pixel size, as diffusers' ControlNet pipelines feed it), the latents,
the timestep and the text embedding. Inside the stream batch every row denoises a different frame
at a different stage, so each row carries the control image of its own frame through the stream
buffer with its latent (see :mod:`stream_core.pipeline`), and every U-Net evaluation gets the
residuals computed with that evaluation's own text embedding.

Preprocessors:

* ``none``: the control frame is used as it is.
* ``canny``: the caller passes the edge image (made off the render thread); the core only checks
  that one was given.
* ``depth``: a transformers depth-estimation model runs on the device on the control frame (or
  the input frame); its prediction is resized to the output size and normalised per frame to
  [0, 1] (near = bright, as the model predicts it) with no host synchronisation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

PREPROCESSORS: tuple[str, ...] = ("none", "canny", "depth")


@dataclass(frozen=True)
class ControlNetSpec:
    """One ControlNet. ``model``, ``preprocessor`` and ``depth_model`` are cold (a change needs a
    rebuild); ``scale`` and ``enabled`` are the initial live values."""

    model: str
    scale: float = 1.0
    preprocessor: str = "none"
    enabled: bool = True
    depth_model: str | None = None

    def check(self) -> None:
        """Validate everything up front, naming the bad value."""
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"controlnet model should be a folder or hub id but is {self.model!r}")
        if self.preprocessor not in PREPROCESSORS:
            raise ValueError(
                f"controlnet preprocessor should be one of {', '.join(PREPROCESSORS)} but is {self.preprocessor!r}"
            )
        check_scale(self.scale)
        if not isinstance(self.enabled, bool):
            raise ValueError(f"controlnet enabled should be true or false but is {self.enabled!r}")
        if self.preprocessor == "depth" and not self.depth_model:
            raise ValueError(f"controlnet {self.model!r}: preprocessor 'depth' needs depth_model (a folder or hub id)")
        if self.preprocessor != "depth" and self.depth_model:
            raise ValueError(f"controlnet {self.model!r}: depth_model is only used with preprocessor 'depth'")

    @property
    def cold_key(self) -> tuple[str, str, str | None]:
        """What needs a rebuild when it changes."""
        return (self.model, self.preprocessor, self.depth_model)


def check_scale(v: Any, name: str = "controlnet scale") -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} should be a finite number >= 0 but is {v!r}")
    return float(v)


@dataclass
class LoadedControlNet:
    """A ControlNet model on the device, its spec and (for ``depth``) its depth estimator."""

    spec: ControlNetSpec
    model: Any
    depth: DepthEstimator | None = None


def check_compatible(unet: Any, controlnet: Any, name: str) -> None:
    """The ControlNet's residuals must fit the U-Net's skip connections (same family)."""
    u, c = unet.config, controlnet.config
    for key in ("cross_attention_dim", "block_out_channels", "layers_per_block", "in_channels"):
        uv, cv = getattr(u, key, None), getattr(c, key, None)
        if isinstance(uv, list):
            uv = tuple(uv)
        if isinstance(cv, list):
            cv = tuple(cv)
        if uv != cv:
            raise ValueError(
                f"ControlNet {name} does not fit the U-Net: its {key} is {cv!r} but the U-Net's is {uv!r} "
                "(use a ControlNet trained for this model family)"
            )


def _processor_geometry(folder: Path) -> tuple[tuple[float, float, float], tuple[float, float, float], tuple[int, int]]:
    """mean, std and (height, width) from a transformers ``preprocessor_config.json``."""
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)
    hw = (384, 384)
    p = folder / "preprocessor_config.json"
    if p.is_file():
        cfg = json.loads(p.read_text(encoding="utf-8"))
        mean = cfg.get("image_mean", mean)
        std = cfg.get("image_std", std)
        size = cfg.get("size") or {}
        multiple = int(cfg.get("ensure_multiple_of", 1) or 1)
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if "height" in size and "width" in size:
            hw = (int(size["height"]), int(size["width"]))
        elif "shortest_edge" in size:
            hw = (int(size["shortest_edge"]),) * 2
        hw = (max(multiple, hw[0] // multiple * multiple), max(multiple, hw[1] // multiple * multiple))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std), hw  # type: ignore[return-value]


class DepthEstimator:
    """A transformers depth-estimation model run on the device: ``(f, 3, H, W)`` RGB in [0, 1] ->
    ``(f, 3, H, W)`` depth in [0, 1], same device and dtype, no host synchronisation."""

    def __init__(self, model: Any, mean: Sequence[float], std: Sequence[float], size: tuple[int, int],
                 name: str = "depth model") -> None:
        self.model = model
        self.name = name
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.size = (int(size[0]), int(size[1]))
        self.mean = torch.tensor(list(mean), device=self.device, dtype=self.dtype).view(1, 3, 1, 1)
        self.std = torch.tensor(list(std), device=self.device, dtype=self.dtype).view(1, 3, 1, 1)

    @classmethod
    def from_folder(cls, model: Any, folder: Path | None, name: str) -> DepthEstimator:
        mean, std, hw = _processor_geometry(folder) if folder is not None else ((0.5,) * 3, (0.5,) * 3, (384, 384))
        return cls(model, mean, std, hw, name)

    @torch.inference_mode()
    def __call__(self, images01: torch.Tensor) -> torch.Tensor:
        h, w = images01.shape[-2:]
        x = images01.to(self.device, self.dtype)
        x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False)
        x = (x - self.mean) / self.std
        depth = self.model(pixel_values=x).predicted_depth
        if depth.dim() == 3:
            depth = depth.unsqueeze(1)
        depth = F.interpolate(depth.float(), size=(h, w), mode="bicubic", align_corners=False)
        flat = depth.flatten(1)
        lo = flat.amin(dim=1).view(-1, 1, 1, 1)
        hi = flat.amax(dim=1).view(-1, 1, 1, 1)
        depth = (depth - lo) / (hi - lo).clamp_min(1e-6)
        return depth.clamp(0.0, 1.0).expand(-1, 3, -1, -1).to(images01.dtype)


def resize_control(images01: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize control frames to the output size on their device (bilinear, antialiased when shrinking)."""
    if tuple(images01.shape[-2:]) == (height, width):
        return images01
    shrink = images01.shape[-2] > height or images01.shape[-1] > width
    dt = images01.dtype
    x = images01.float()  # float32 for the resampling on every device (half-precision kernels vary)
    out = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                        antialias=shrink and x.device.type != "meta")
    return out.clamp(0.0, 1.0).to(dt)
