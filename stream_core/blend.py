"""Spherical interpolation for prompt embeddings and noise tensors."""

from __future__ import annotations

import torch


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation between two same-shaped tensors, treated as flat vectors.

    The angle is measured on the direction; the norm is interpolated linearly, so slerp of two
    unit-variance noise tensors stays unit-variance (a linear mix would shrink it and wash the
    picture out mid-morph). Falls back to a linear mix when the tensors are (anti)parallel.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if t <= 0.0:
        return a.clone()
    if t >= 1.0:
        return b.clone()
    af = a.to(torch.float32).flatten()
    bf = b.to(torch.float32).flatten()
    na, nb = af.norm(), bf.norm()
    if na < eps or nb < eps:
        return torch.lerp(a.to(torch.float32), b.to(torch.float32), t).to(a.dtype)
    ua, ub = af / na, bf / nb
    dot = torch.clamp((ua * ub).sum(), -1.0, 1.0)
    omega = torch.arccos(dot)
    so = torch.sin(omega)
    if so.abs() < eps:
        out = torch.lerp(af, bf, t)
    else:
        direction = (torch.sin((1.0 - t) * omega) / so) * ua + (torch.sin(t * omega) / so) * ub
        out = direction * ((1.0 - t) * na + t * nb)
    return out.view_as(a).to(a.dtype)
