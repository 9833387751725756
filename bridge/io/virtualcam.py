"""Virtual camera sink through ``pyvirtualcam`` (imported lazily): v4l2loopback on Linux, the OBS
virtual camera on Windows and macOS. Video-call and streaming apps then see the output as a
webcam. The publisher paces frames, so ``sleep_until_next_frame`` is never used."""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
from pydantic import Field

from bridge.io._common import SinkConfig, as_rgb, import_optional
from bridge.io.base import BackendUnavailable, FrameError, FrameSink

log = logging.getLogger(__name__)

_HINTS = (
    "Linux: load the v4l2loopback kernel module (e.g. `sudo modprobe v4l2loopback "
    "exclusive_caps=1`); Windows/macOS: install OBS Studio and start its virtual camera once"
)


class VirtualCamSinkConfig(SinkConfig):
    """Publish the output as a virtual webcam (``virtualcam`` extra)."""

    type: Literal["virtualcam"] = "virtualcam"
    device: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="Device to use, e.g. '/dev/video10' on Linux; default: the backend's first.",
    )
    backend: Literal["auto", "v4l2loopback", "obs", "unitycapture"] = Field(
        "auto", description="pyvirtualcam backend; 'auto' lets pyvirtualcam pick the platform's."
    )


class VirtualCamSink(FrameSink):
    kind = "virtualcam"

    def __init__(self, cfg: VirtualCamSinkConfig | None = None) -> None:
        self.cfg = cfg or VirtualCamSinkConfig()
        self._cam: Any = None
        self._size: tuple[int, int] = (0, 0)
        self.frames_sent = 0

    def open(self, width: int, height: int, fps: float) -> None:
        pvc = import_optional("pyvirtualcam", kind="Virtual camera", extra="virtualcam")
        if width < 1 or height < 1:
            raise ValueError(f"virtual camera needs a frame size, got {width}x{height}")
        try:
            self._cam = pvc.Camera(
                width=width,
                height=height,
                fps=float(fps if fps > 0 else 30.0),
                fmt=pvc.PixelFormat.RGB,
                device=self.cfg.device,
                backend=None if self.cfg.backend == "auto" else self.cfg.backend,
            )
        except RuntimeError as exc:
            raise BackendUnavailable(f"no virtual camera available: {exc}. {_HINTS}") from exc
        self._size = (height, width)
        log.info("virtual camera %s open (%dx%d)", getattr(self._cam, "device", "?"), width, height)

    def send(self, rgb: np.ndarray) -> None:
        cam = self._cam
        if cam is None:
            raise RuntimeError("VirtualCamSink.send() called before open()")
        rgb = as_rgb(rgb)
        if rgb.shape[:2] != self._size:
            raise FrameError(
                f"virtual camera was opened at {self._size[1]}x{self._size[0]}, "
                f"got a {rgb.shape[1]}x{rgb.shape[0]} frame"
            )
        cam.send(rgb)
        self.frames_sent += 1

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            cam.close()

    def describe(self) -> str:
        device = getattr(self._cam, "device", None) or self.cfg.device or "default"
        return f"virtualcam:{device}"
