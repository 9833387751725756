"""Device and dtype discipline checks that need no GPU.

* :class:`ShapeRunner`: a model runner that only does shape-correct arithmetic, so a pipeline runs
  on the ``meta`` device (tensors without data). Any op mixing a meta tensor with a CPU tensor then
  fails as it would on CUDA, and any host synchronisation (``.item()``, ``bool(tensor)``) fails too.
* :class:`DeviceGuard`: a dispatch mode that records every op that mixes devices, mixes floating
  dtypes, or computes a floating CPU tensor (other than drawing noise on the CPU generator and
  moving a tensor), and counts CPU -> device uploads of data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten


class ShapeRunner:
    """Implements ``ModelRunner`` with cheap, shape-correct ops; checks what it is given."""

    def __init__(self, device: str | torch.device = "meta", dtype: torch.dtype = torch.float16) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.problems: list[str] = []
        self.unet_batches: list[int] = []

    def _check(self, what: str, t: torch.Tensor, dtype: torch.dtype | None) -> None:
        if t.device != self.device:
            self.problems.append(f"{what} on {t.device}")
        if dtype is not None and t.dtype != dtype:
            self.problems.append(f"{what} is {t.dtype}")

    def unet(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        self._check("latents", latents, self.dtype)
        self._check("timesteps", timesteps, None)
        self._check("text_embeds", text_embeds, self.dtype)
        if not (latents.shape[0] == timesteps.shape[0] == text_embeds.shape[0]):
            self.problems.append(f"batch mismatch {latents.shape[0]} {timesteps.shape[0]} {text_embeds.shape[0]}")
        self.unet_batches.append(int(latents.shape[0]))
        return latents * 0.5 + text_embeds.mean(dim=(1, 2)).view(-1, 1, 1, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check("images", images, self.dtype)
        pooled = F.avg_pool2d(images, 8)
        return torch.cat([pooled, pooled[:, :1]], dim=1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check("latents to decode", latents, self.dtype)
        return F.interpolate(latents[:, :3], scale_factor=8)


_MOVES = {aten._to_copy.default, aten.copy_.default}
_CPU_ALLOWED = {
    aten.randn.generator,  # make_noise: drawn on the CPU generator, then moved once
    aten.randn.default,
    aten.lift_fresh.default,
    aten.detach.default,
    aten.alias.default,
    aten.view.default,
    aten.unsqueeze.default,
    aten.isfinite.default,
}


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


class DeviceGuard(TorchDispatchMode):
    """Records discipline violations for a pipeline on ``device`` in ``dtype``."""

    def __init__(self, device: str | torch.device = "meta", dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.dtype = dtype
        self.violations: list[str] = []
        self.uploads = 0  # CPU -> device copies of more than one element

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [t for t in _tensors((args, kwargs)) if t.dim() > 0]
        outs = [t for t in _tensors(out) if t.dim() > 0]
        name = str(func)
        devices = {t.device for t in ins}
        if func in _MOVES:
            src = ins[-1] if func is aten.copy_.default else ins[0] if ins else None
            dst = outs[0] if outs else None
            if src is not None and dst is not None and src.device.type == "cpu" and dst.device == self.device:
                self.uploads += 1
            return out
        if len(devices) > 1:
            self.violations.append(f"{name} mixes {sorted(map(str, devices))}")
        floats = {t.dtype for t in ins if t.is_floating_point()}
        if len(floats) > 1:
            self.violations.append(f"{name} mixes {sorted(map(str, floats))}")
        for t in outs:
            if t.device.type == "cpu" and t.is_floating_point() and func not in _CPU_ALLOWED:
                self.violations.append(f"{name} computes a {tuple(t.shape)} tensor on the CPU")
            if t.device == self.device and t.is_floating_point() and t.dtype not in (self.dtype, torch.float32):
                self.violations.append(f"{name} makes {t.dtype} on {t.device}")
        return out


def tensors_of(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor held in ``obj``'s attributes (one level of dicts, lists, tuples, dataclasses)."""
    found: dict[str, torch.Tensor] = {}
    for key, value in vars(obj).items():
        items = [(key, value)]
        if isinstance(value, dict):
            items = [(f"{key}[{k!r}]", v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
        elif hasattr(value, "__dataclass_fields__"):
            items = [(f"{key}.{k}", getattr(value, k)) for k in value.__dataclass_fields__]
        for k, v in items:
            if isinstance(v, torch.Tensor):
                found[prefix + k] = v
    return found
