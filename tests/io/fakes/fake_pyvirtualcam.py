"""``FakePyVirtualCam``: a stand-in for ``pyvirtualcam`` (0.11+): ``Camera(width, height, fps, *,
fmt=PixelFormat.RGB, device=None, backend=None, print_fps=False, **kw)`` raising RuntimeError
when no virtual camera device exists, ``send(frame)`` checking the frame shape (ValueError),
``close()``, ``device``; and the ``PixelFormat`` enum."""

from __future__ import annotations

import enum
import sys
from types import ModuleType
from typing import Any

import numpy as np


class PixelFormat(enum.Enum):
    RGB = "RGB"
    BGR = "BGR"
    RGBA = "RGBA"
    GRAY = "GRAY"
    I420 = "I420"
    NV12 = "NV12"
    YUYV = "YUYV"
    UYVY = "UYVY"


class FakePyVirtualCam(ModuleType):
    def __init__(self, device_available: bool = True) -> None:
        super().__init__("pyvirtualcam", "Fake pyvirtualcam (tests/io/fakes/fake_pyvirtualcam.py)")
        self.PixelFormat = PixelFormat
        self.device_available = device_available
        self.cameras: list[Any] = []
        module = self

        class Camera:
            def __init__(
                self,
                width: int,
                height: int,
                fps: float,
                *,
                fmt: PixelFormat = PixelFormat.RGB,
                device: str | None = None,
                backend: str | None = None,
                print_fps: bool = False,
                **kw: Any,
            ) -> None:
                if not module.device_available:
                    raise RuntimeError("'v4l2loopback' backend: no v4l2 loopback device found")
                self.width, self.height, self.fps, self.fmt = width, height, fps, fmt
                self.backend = backend or "v4l2loopback"
                self.device = device or "/dev/video10"
                self.frames: list[np.ndarray] = []
                self.closed = False
                module.cameras.append(self)

            def send(self, frame: np.ndarray) -> None:
                if self.closed:
                    raise RuntimeError("camera is closed")
                channels = {PixelFormat.RGB: 3, PixelFormat.BGR: 3, PixelFormat.RGBA: 4}[self.fmt]
                if frame.shape != (self.height, self.width, channels):
                    raise ValueError(
                        f"mismatching frame dimensions: expected {(self.height, self.width, channels)}, "
                        f"got {frame.shape}"
                    )
                self.frames.append(frame.copy())

            def close(self) -> None:
                self.closed = True

        self.Camera = Camera

    def install(self, monkeypatch: Any) -> None:
        monkeypatch.setitem(sys.modules, "pyvirtualcam", self)
