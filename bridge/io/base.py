"""The one frame interface every source and sink backend implements.

Threading contract: a backend object is created, opened, used and closed on ONE thread (the
worker the runtime gives it). Spout needs this (its GL context is per thread); the others are
simply easier to reason about that way. Backends never sleep to pace frames: sources block at most
``timeout`` seconds in :meth:`FrameSource.read`, sinks send what they are given.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


class PixelFormat(str, enum.Enum):
    """Pixel layouts a source may deliver. All are 8 bits per channel."""

    RGB = "rgb"  # H x W x 3
    RGBA = "rgba"  # H x W x 4
    BGRA = "bgra"  # H x W x 4
    BGR = "bgr"  # H x W x 3
    UYVY = "uyvy"  # H x W x 2 (packed 4:2:2, U Y0 V Y1 per pixel pair)


class FrameError(ValueError):
    """A frame that cannot be used (wrong size, stride, dtype...). Counted and dropped."""


class BackendUnavailable(RuntimeError):
    """A backend cannot run on this platform or install. The message says what to install."""


class SourceGone(RuntimeError):
    """The sender disappeared or the connection broke; the runtime will reconnect."""


class SinkFailed(RuntimeError):
    """A sink keeps failing to deliver frames (the library refuses them); the runtime may reopen it."""


#: Channels per pixel for each :class:`PixelFormat` (the third array dimension).
CHANNELS: dict[PixelFormat, int] = {
    PixelFormat.RGB: 3,
    PixelFormat.BGR: 3,
    PixelFormat.RGBA: 4,
    PixelFormat.BGRA: 4,
    PixelFormat.UYVY: 2,
}


@dataclass
class Frame:
    """One captured video frame.

    ``data`` is a numpy uint8 array laid out as ``fmt`` says. ``t_capture`` is
    ``time.monotonic()`` when the frame was captured: end-to-end latency is measured from it.
    """

    data: np.ndarray
    fmt: PixelFormat
    seq: int = 0
    t_capture: float = field(default_factory=time.monotonic)

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    @property
    def height(self) -> int:
        return int(self.data.shape[0])


class FrameSource(ABC):
    """A video input. ``read`` returns the newest frame or ``None`` when none came in time."""

    kind: str = ""

    @abstractmethod
    def open(self) -> None:
        """Connect / create receivers. Raise :class:`SourceGone` if the sender is not there."""

    @abstractmethod
    def read(self, timeout: float) -> Frame | None:
        """Block at most ``timeout`` s for a NEW frame. Raise :class:`SourceGone` on loss."""

    @abstractmethod
    def close(self) -> None:
        """Release everything. Safe to call twice and after a failed open."""

    def describe(self) -> str:
        return self.kind

    @property
    def nominal_fps(self) -> float | None:
        """The sender's frame rate when known (used as the default output rate)."""
        return None


class FrameSink(ABC):
    """A video output. Receives RGB uint8 frames (H x W x 3, C-contiguous)."""

    kind: str = ""

    @abstractmethod
    def open(self, width: int, height: int, fps: float) -> None: ...

    @abstractmethod
    def send(self, rgb: np.ndarray) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def describe(self) -> str:
        return self.kind
