"""The built-in test pattern: a smoothly moving colourful image with a frame counter and clock.

It is the default source (``streambridge demo`` runs without any other software) and the one
the tests and benchmarks use. Everything expensive is precomputed in :meth:`PatternSource.open`:
a periodic gradient tile (2x the frame size, so any window into it is a valid frame), a disc
sprite and the text strip geometry. A frame is then one window copy, two small sprite pastes and
one short ``cv2.putText`` on a small strip: well under a millisecond at 512x512.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from bridge.io._common import FrameClock, SourceConfig
from bridge.io.base import Frame, FrameSource, PixelFormat

log = logging.getLogger(__name__)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT_TEMPLATE = "000000  00:00:00.000"


class PatternSourceConfig(SourceConfig):
    """Built-in moving test pattern (RGB). Needs nothing installed."""

    type: Literal["pattern"] = "pattern"
    width: int = Field(512, ge=16, le=7680, description="Frame width in pixels.")
    height: int = Field(512, ge=16, le=4320, description="Frame height in pixels.")
    fps: float = Field(30.0, gt=0, le=240, description="Frames per second the pattern is paced to.")
    overlay: bool = Field(
        True, description="Draw the frame counter and wall-clock time in the top-left corner."
    )


def _periodic_tile(width: int, height: int) -> np.ndarray:
    """A colourful gradient that wraps seamlessly in x and y, with a faint 64 px grid."""
    x = (np.arange(width, dtype=np.float32) / width)[None, :]
    y = (np.arange(height, dtype=np.float32) / height)[:, None]
    tau = 2.0 * math.pi
    r = 0.5 + 0.25 * np.sin(tau * x) + 0.25 * np.sin(tau * (x + y))
    g = 0.5 + 0.25 * np.sin(tau * y + 2.0) + 0.25 * np.sin(tau * (2 * x - y) + 1.0)
    b = 0.5 + 0.25 * np.cos(tau * (x - y)) + 0.25 * np.sin(tau * 2 * y + 4.0)
    tile = np.stack(np.broadcast_arrays(r, g, b), axis=-1)
    tile = np.clip(tile * 255.0 + 0.5, 0, 255).astype(np.uint8)
    grid = max(16, min(width, height) // 8)
    tile[::grid, :, :] //= 2
    tile[:, ::grid, :] //= 2
    return tile


class PatternSource(FrameSource):
    """See module docstring. ``clock``/``sleep`` are injectable so pacing tests need no waiting."""

    kind = "pattern"

    def __init__(
        self,
        cfg: PatternSourceConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg or PatternSourceConfig()
        self._clock = clock
        self._sleep = sleep
        self._frame_clock = FrameClock(self.cfg.fps, clock, sleep)
        self._bg: np.ndarray | None = None
        self._seq = 0

    # -- FrameSource ---------------------------------------------------------------------------
    def open(self) -> None:
        w, h = self.cfg.width, self.cfg.height
        self._bg = np.tile(_periodic_tile(w, h), (2, 2, 1))
        # disc sprite: white with a dark rim, drawn through a mask
        self._disc = max(8, min(w, h) // 5)
        s = self._disc
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        dist = np.hypot(xx - (s - 1) / 2.0, yy - (s - 1) / 2.0)
        self._disc_mask = dist <= s / 2.0 - 0.5
        self._disc_rgb = np.where(
            (dist >= s / 2.0 - max(2.0, s / 12.0))[..., None],
            np.array([20, 20, 20], np.uint8),
            np.array([245, 245, 245], np.uint8),
        ).astype(np.uint8)
        self._square = max(6, min(w, h) // 7)
        # text strip geometry: scale the font so the template fits in ~50% of the width
        (tw, th), base = cv2.getTextSize(_TEXT_TEMPLATE, _FONT, 1.0, 1)
        self._font_scale = max(0.25, min(1.5, 0.5 * w / tw, 0.05 * h / th))
        self._thickness = 1 if self._font_scale < 1.0 else 2
        (tw, th), base = cv2.getTextSize(_TEXT_TEMPLATE, _FONT, self._font_scale, self._thickness)
        pad = max(2, th // 3)
        self._strip = (min(h, th + base + 2 * pad), min(w, tw + 2 * pad))
        self._text_org = (pad, pad + th)
        self._frame_clock.reset()
        self._seq = 0
        log.debug("pattern source %dx%d @ %.3g fps ready", w, h, self.cfg.fps)

    def read(self, timeout: float) -> Frame | None:
        if self._bg is None:
            raise RuntimeError("PatternSource.read() called before open()")
        if not self._frame_clock.wait(timeout):
            return None
        seq = self._seq
        self._seq += 1
        data = self.render(seq)
        return Frame(data=data, fmt=PixelFormat.RGB, seq=seq, t_capture=self._clock())

    def close(self) -> None:
        self._bg = None

    def describe(self) -> str:
        return f"pattern {self.cfg.width}x{self.cfg.height}@{self.cfg.fps:g}"

    @property
    def nominal_fps(self) -> float | None:
        return float(self.cfg.fps)

    # -- drawing -------------------------------------------------------------------------------
    def render(self, seq: int, wall_time: float | None = None) -> np.ndarray:
        """Draw frame number ``seq`` (a new H x W x 3 RGB array). Motion depends on ``seq`` only."""
        if self._bg is None:
            raise RuntimeError("PatternSource.render() called before open()")
        w, h, fps = self.cfg.width, self.cfg.height, self.cfg.fps
        t = seq / fps
        out = np.empty((h, w, 3), np.uint8)
        # background drifts diagonally, wrapping every 8 s horizontally / 12 s vertically
        ox = int(w * t / 8.0) % w
        oy = int(h * t / 12.0) % h
        np.copyto(out, self._bg[oy : oy + h, ox : ox + w])
        # a disc on a Lissajous path
        s = self._disc
        if s <= min(w, h):
            cx = int((w - s) * (0.5 + 0.5 * math.sin(t * 1.3)))
            cy = int((h - s) * (0.5 + 0.5 * math.sin(t * 1.7 + 0.5)))
            region = out[cy : cy + s, cx : cx + s]
            np.copyto(region, self._disc_rgb, where=self._disc_mask[..., None])
        # a square bouncing the other way, its colour cycling
        q = self._square
        if q <= min(w, h):
            sx = int((w - q) * (0.5 + 0.5 * math.cos(t * 0.9)))
            sy = int((h - q) * (0.5 + 0.5 * math.sin(t * 2.3 + 1.0)))
            hue = (t * 0.25) % 1.0
            colour = [int(127.5 + 127.5 * math.cos(2 * math.pi * (hue + k / 3))) for k in range(3)]
            out[sy : sy + q, sx : sx + q] = colour
        if self.cfg.overlay:
            sh, sw = self._strip
            out[:sh, :sw] = 0
            now = time.time() if wall_time is None else wall_time
            stamp = time.strftime("%H:%M:%S", time.localtime(now))
            millis = int((now % 1.0) * 1000)
            cv2.putText(
                out,
                f"{seq % 1_000_000:06d}  {stamp}.{millis:03d}",
                self._text_org,
                _FONT,
                self._font_scale,
                (255, 255, 255),
                self._thickness,
                cv2.LINE_AA,
            )
        return out
