"""Spherical interpolation for prompt embeddings and noise tensors."""

from __future__ import annotations

import torch


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation between two same-shaped tensors, treated as flat vectors.

    The angle is measured on the direction; the norm is interpolated linearly, so slerp of two
    unit-variance noise tensors stays unit-variance (a linear mix would shrink it and wash the
    picture out mid-morph). Falls back to a linear mix when the tensors are (anti)parallel or one
    of them is (near) zero.

    Computed in float32 and returned in ``a``'s dtype. Both tensors must be on one device (it is
    never decided here), and the fallback is chosen on the device (``torch.where``), so a slerp
    never waits for the GPU.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"slerp needs tensors on one device, got {a.device} and {b.device}")
    t = float(t)
    if t <= 0.0:
        return a.clone()
    if t >= 1.0:
        return b.to(a.dtype, copy=True)
    af = a.to(torch.float32).flatten()
    bf = b.to(torch.float32).flatten()
    na, nb = af.norm(), bf.norm()
    linear = torch.lerp(af, bf, t)
    ua = af / na.clamp_min(eps)
    ub = bf / nb.clamp_min(eps)
    dot = torch.clamp((ua * ub).sum(), -1.0, 1.0)
    omega = torch.arccos(dot)
    so = torch.sin(omega)
    degenerate = (so.abs() < eps) | (na < eps) | (nb < eps)
    so_safe = torch.where(degenerate, torch.ones_like(so), so)
    direction = (torch.sin((1.0 - t) * omega) / so_safe) * ua + (torch.sin(t * omega) / so_safe) * ub
    spherical = direction * ((1.0 - t) * na + t * nb)
    out = torch.where(degenerate, linear, spherical)
    return out.view_as(a).to(a.dtype)
