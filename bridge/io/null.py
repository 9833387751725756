"""A sink that checks and counts frames, then drops them (benchmarks, headless tests)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from bridge.io._common import SinkConfig, as_rgb
from bridge.io.base import FrameSink


class NullSinkConfig(SinkConfig):
    """Discard every frame (counted)."""

    type: Literal["null"] = "null"


class NullSink(FrameSink):
    kind = "null"

    def __init__(self, cfg: NullSinkConfig | None = None) -> None:
        self.cfg = cfg or NullSinkConfig()
        self.frames = 0
        self.last_shape: tuple[int, ...] | None = None
        self.opened = False

    def open(self, width: int, height: int, fps: float) -> None:
        self.opened = True
        self.frames = 0

    def send(self, rgb: np.ndarray) -> None:
        rgb = as_rgb(rgb)
        self.frames += 1
        self.last_shape = tuple(rgb.shape)

    def close(self) -> None:
        self.opened = False

    def describe(self) -> str:
        return f"null ({self.frames} frames)"
