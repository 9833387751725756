"""Pieces every backend shares: config base classes, lazy optional imports, pacing, input checks.

Nothing here imports a platform library. Backends import theirs lazily (in ``open()``) through
:func:`import_optional`, which turns a missing module into :class:`BackendUnavailable` with the
``pip install`` line that fixes it.
"""

from __future__ import annotations

import importlib
import re
import sys
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np
from pydantic import BaseModel, ConfigDict

from bridge.io.base import BackendUnavailable, FrameError

_PLATFORM_NAMES = {"win32": "Windows", "darwin": "macOS", "linux": "Linux"}


class BackendConfig(BaseModel):
    """Base of every backend config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class SourceConfig(BackendConfig):
    """Base of every frame-source config (subclasses add ``type: Literal[...]``)."""


class SinkConfig(BackendConfig):
    """Base of every frame-sink config (subclasses add ``type: Literal[...]``)."""


def install_hint(extra: str) -> str:
    return f'pip install "streambridge[{extra}]"'


def import_optional(
    module: str, *, kind: str, extra: str, platform: str | None = None
) -> ModuleType:
    """Import ``module`` or raise :class:`BackendUnavailable` naming the extra to install.

    ``platform`` (a ``sys.platform`` value) only shapes the message: when the module is present
    it is used wherever it is (this is how the contract tests inject fakes on Linux), and when it
    is missing on the wrong platform the message says the backend does not exist here at all.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if platform is not None and sys.platform != platform:
            where = _PLATFORM_NAMES.get(platform, platform)
            here = _PLATFORM_NAMES.get(sys.platform, sys.platform)
            raise BackendUnavailable(
                f"{kind} is {where}-only and this is {here}; on {where} install it with "
                f"{install_hint(extra)}"
            ) from exc
        raise BackendUnavailable(
            f"{kind} needs the Python module '{module}', which could not be imported ({exc}); "
            f"install it with {install_hint(extra)}"
        ) from exc


class FrameClock:
    """Decides when the next frame of a fixed-rate source is due.

    :meth:`wait` blocks at most ``timeout`` seconds: it returns True at the moment the next frame
    is due, or False (after sleeping the whole timeout) when it is not due within it. A consumer
    that reads late gets the next frame at once but never a burst of catch-up frames: when the
    schedule falls more than one period behind it restarts from now.
    """

    def __init__(
        self,
        fps: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        self.period = 1.0 / fps
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def reset(self) -> None:
        self._next = None

    def wait(self, timeout: float) -> bool:
        now = self._clock()
        if self._next is None:
            self._next = now
        delay = self._next - now
        if delay > timeout:
            if timeout > 0:
                self._sleep(timeout)
            return False
        if delay > 0:
            self._sleep(delay)
            now = self._next
        self._next += self.period
        if self._next <= now:  # more than a period late: restart the schedule, no burst
            self._next = now + self.period
        return True


def as_rgb(rgb: object) -> np.ndarray:
    """Check a sink's input: a non-empty uint8 H x W x 3 array. Returns it C-contiguous."""
    if not isinstance(rgb, np.ndarray):
        raise FrameError(f"sink expects a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise FrameError(f"sink expects uint8 RGB, got dtype {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise FrameError(f"sink expects H x W x 3 RGB, got shape {tuple(rgb.shape)}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise FrameError(f"sink got an empty frame (shape {tuple(rgb.shape)})")
    return np.ascontiguousarray(rgb)


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting ``f2.png`` before ``f10.png`` (numbers compare as numbers)."""
    parts = _DIGITS.split(name.lower())
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p != "")
