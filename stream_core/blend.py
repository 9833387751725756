"""Spherical interpolation for prompt embeddings and noise tensors."""

from __future__ import annotations

import math

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


def slerp_weights(norm_a: float, norm_b: float, dot: float, t: float, eps: float = 1e-6) -> tuple[float, float]:
    """``(alpha, beta)`` with ``slerp(a, b, t) == alpha * a + beta * b``, from the norms of ``a`` and
    ``b`` and their dot product (host numbers, e.g. of tensors drawn on the CPU). The same maths as
    :func:`slerp`, including its linear fallback, for ``0 < t < 1``."""
    t = float(t)
    if norm_a < eps or norm_b < eps:
        return 1.0 - t, t
    cos = min(1.0, max(-1.0, dot / (max(norm_a, eps) * max(norm_b, eps))))
    omega = math.acos(cos)
    so = math.sin(omega)
    if abs(so) < eps:
        return 1.0 - t, t
    m = (1.0 - t) * norm_a + t * norm_b
    return math.sin((1.0 - t) * omega) / so * m / norm_a, math.sin(t * omega) / so * m / norm_b


class Slerp:
    """:func:`slerp` between one fixed pair of tensors, prepared once on their device.

    What does not depend on ``t`` (the norms, the angle, the fallback flag) is computed at
    construction; each :meth:`at` is then a few tiny ops on two-element tensors and one
    ``(2,) @ (2, N)`` product, instead of about twenty element-wise passes. Nothing here reads a
    device value on the host (a fader moving every frame never waits for the GPU)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> None:
        if a.shape != b.shape:
            raise ValueError(f"slerp needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
        if a.device != b.device:
            raise ValueError(f"slerp needs tensors on one device, got {a.device} and {b.device}")
        self.a, self.b = a, b
        ab = torch.stack([a.reshape(-1), b.reshape(-1)]).to(torch.float32)  # (2, N)
        norms = torch.linalg.vector_norm(ab, dim=1)
        safe = norms.clamp_min(eps)
        dot = torch.clamp((ab[0] / safe[0] * (ab[1] / safe[1])).sum(), -1.0, 1.0)
        omega = torch.arccos(dot)
        so = torch.sin(omega)
        self._degenerate = (so.abs() < eps) | (norms < eps).any()
        self._ab = ab
        self._omega = omega
        self._norms = norms
        self._inv = 1.0 / (torch.where(self._degenerate, torch.ones_like(so), so) * safe)
        # [1, 0] and [-1, 1], made by fills on the device (no host copy)
        self._base = torch.zeros(2, device=a.device, dtype=torch.float32)
        self._base[:1].fill_(1.0)
        self._step = torch.ones(2, device=a.device, dtype=torch.float32)
        self._step[:1].fill_(-1.0)

    def at(self, t: float) -> torch.Tensor:
        """``slerp(a, b, t)``: a new tensor in ``a``'s shape and dtype."""
        t = float(t)
        if t <= 0.0:
            return self.a.clone()
        if t >= 1.0:
            return self.b.to(self.a.dtype, copy=True)
        tv = torch.add(self._base, self._step, alpha=t)  # [1 - t, t]
        coef = torch.sin(tv * self._omega) * self._inv * torch.dot(tv, self._norms)
        coef = torch.where(self._degenerate, tv, coef)
        return (coef @ self._ab).view(self.a.shape).to(self.a.dtype)
