"""A local camera (webcam, capture card) through OpenCV's ``VideoCapture``.

OpenCV's ``read()`` cannot be given a timeout: it blocks until the device delivers, which is one
frame period for a working camera. A camera that stops delivering makes ``read()`` return False,
which raises :class:`SourceGone`. Frames are BGR.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field

from bridge.io._common import SourceConfig
from bridge.io.base import Frame, FrameSource, PixelFormat, SourceGone

log = logging.getLogger(__name__)

_APIS = {
    "any": "CAP_ANY",
    "v4l2": "CAP_V4L2",
    "dshow": "CAP_DSHOW",
    "msmf": "CAP_MSMF",
    "avfoundation": "CAP_AVFOUNDATION",
}


class CameraSourceConfig(SourceConfig):
    """Capture from a local camera by OpenCV device index."""

    type: Literal["camera"] = "camera"
    index: int = Field(0, ge=0, le=63, description="OpenCV device index (0 = first camera).")
    width: int | None = Field(None, ge=16, le=7680, description="Requested capture width.")
    height: int | None = Field(None, ge=16, le=4320, description="Requested capture height.")
    fps: float | None = Field(None, gt=0, le=240, description="Requested capture frame rate.")
    fourcc: str | None = Field(
        None,
        max_length=4,
        pattern=r"^[A-Za-z0-9 ]{4}$",
        description="Requested capture codec, e.g. 'MJPG' for higher rates on USB cameras.",
    )
    api: Literal["any", "v4l2", "dshow", "msmf", "avfoundation"] = Field(
        "any", description="OpenCV capture backend."
    )


class CameraSource(FrameSource):
    kind = "camera"

    def __init__(self, cfg: CameraSourceConfig | None = None) -> None:
        self.cfg = cfg or CameraSourceConfig()
        self._cap: Any = None
        self._seq = 0
        self._fps: float | None = None

    def open(self) -> None:
        cfg = self.cfg
        cap = cv2.VideoCapture(cfg.index, int(getattr(cv2, _APIS[cfg.api], cv2.CAP_ANY)))
        if not cap.isOpened():
            cap.release()
            raise SourceGone(f"camera {cfg.index} could not be opened")
        if cfg.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*cfg.fourcc))
        if cfg.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        if cfg.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        if cfg.fps:
            cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = fps if 0.0 < fps <= 1000.0 else None
        self._cap = cap
        self._seq = 0
        log.info(
            "camera %d open: %dx%d @ %s fps",
            cfg.index,
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            self._fps,
        )

    def read(self, timeout: float) -> Frame | None:
        cap = self._cap
        if cap is None:
            raise RuntimeError("CameraSource.read() called before open()")
        ok, img = cap.read()
        t_capture = time.monotonic()
        if not ok or img is None:
            raise SourceGone(f"camera {self.cfg.index} stopped delivering frames")
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.size == 0:
            log.warning("camera %d delivered an unusable frame; dropped", self.cfg.index)
            return None
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        if img.ndim != 3 or img.shape[2] not in (3, 4):
            log.warning("camera %d delivered a %s frame; dropped", self.cfg.index, img.shape)
            return None
        fmt = PixelFormat.BGR if img.shape[2] == 3 else PixelFormat.BGRA
        seq = self._seq
        self._seq += 1
        return Frame(data=np.ascontiguousarray(img), fmt=fmt, seq=seq, t_capture=t_capture)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    @property
    def nominal_fps(self) -> float | None:
        return self._fps

    def describe(self) -> str:
        return f"camera:{self.cfg.index}"
