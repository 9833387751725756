"""A fault-injecting model runner: wraps a real runner and can hang, raise, return NaN or be slow."""

from __future__ import annotations

import threading
import time
from typing import Any

import torch


class FaultRunner:
    """Delegates to ``inner``; ``mode`` (settable from the test thread at any time) picks what
    ``decode`` does: ``ok``, ``hang`` (blocks until :attr:`release` is set), ``raise``, ``nan``
    (an all-NaN image) or ``slow`` (sleeps ``slow_s`` first)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.device = inner.device
        self.dtype = inner.dtype
        self.mode = "ok"
        self.slow_s = 0.2
        self.release = threading.Event()
        self.hanging = threading.Event()
        self.calls = 0

    def unet(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        return self.inner.unet(latents, timesteps, text_embeds)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.encode(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        mode = self.mode
        if mode == "hang":
            self.hanging.set()
            self.release.wait(30.0)
        elif mode == "raise":
            raise RuntimeError("injected device error")
        elif mode == "slow":
            time.sleep(self.slow_s)
        out = self.inner.decode(latents)
        if mode == "nan":
            out = torch.full_like(out, float("nan"))
        return out
