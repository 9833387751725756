"""Spout source and sink (Windows) through ``SpoutGL``, imported lazily in ``open()``.

Rules this module follows (see docs/io-backends.md and the contract tests):

* Spout needs a current OpenGL context. ``createOpenGL()`` makes a hidden window + WGL context
  **on the calling thread**, so it is the first call on every receiver/sender object and every
  later call happens on that same thread. Calls from another thread raise ``RuntimeError`` here
  before they reach Spout.
* Receiving: ``setReceiverName`` ("" follows the active sender), then ``receiveImage`` into a
  preallocated C-contiguous buffer. ``receiveImage`` returns True even when no new frame came, so
  ``isFrameNew()`` decides whether a frame is returned. When ``isUpdated()`` says the sender
  (re)connected or resized, that call copied nothing: the buffer is reallocated from
  ``getSenderWidth/Height()`` and the receive is repeated. ``receiveImage`` returning False after
  a connection means the sender closed: :class:`SourceGone`.
* ``getSenderName`` is mis-wired in SpoutGL 0.1.x (it returns the width): never used.
* Sending: ``setCPUshare(True)`` when available (without it ``sendImage`` returns False on
  systems without GL/DX interop), then ``sendImage(rgba, width, height, GL_RGBA, invert, 0)``
  with a C-contiguous ``w*h*4`` buffer; its result is checked and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from types import ModuleType
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field

from bridge.io._common import SinkConfig, SourceConfig, as_rgb, import_optional
from bridge.io.base import (
    BackendUnavailable,
    Frame,
    FrameSink,
    FrameSource,
    PixelFormat,
    SinkFailed,
    SourceGone,
)

log = logging.getLogger(__name__)

_GL_RGBA = 0x1908
_GL_BGRA_EXT = 0x80E1
_MAX_SIDE = 16384


def load_spout() -> ModuleType:
    return import_optional("SpoutGL", kind="Spout", extra="spout", platform="win32")


def _gl_format(mod: ModuleType, name: str, default: int) -> int:
    return int(getattr(getattr(mod, "enums", None), name, default))


class _OneThread:
    """Remembers the thread that created the GL context and refuses calls from any other."""

    def __init__(self) -> None:
        self._owner: int | None = None

    def claim(self) -> None:
        self._owner = threading.get_ident()

    def check(self, what: str) -> None:
        if self._owner is not None and threading.get_ident() != self._owner:
            raise RuntimeError(
                f"Spout {what} called from another thread than the one that opened it "
                "(its OpenGL context belongs to that thread)"
            )

    def release(self) -> None:
        self._owner = None


# -- source --------------------------------------------------------------------------------------
class SpoutSourceConfig(SourceConfig):
    """Receive a Spout sender (Windows, ``spout`` extra)."""

    type: Literal["spout"] = "spout"
    name: str = Field(
        "", max_length=255, description="Spout sender name; empty follows the active sender."
    )
    pixel_format: Literal["rgba", "bgra"] = Field(
        "rgba", description="Byte order Spout copies the texture into."
    )
    flip: bool = Field(False, description="Flip vertically while receiving.")
    poll_interval_ms: float = Field(
        1.0,
        ge=0.1,
        le=50.0,
        description="How often read() asks Spout for a new frame while waiting.",
    )


class SpoutSource(FrameSource):
    kind = "spout"

    def __init__(self, cfg: SpoutSourceConfig | None = None) -> None:
        self.cfg = cfg or SpoutSourceConfig()
        self._mod: ModuleType | None = None
        self._recv: Any = None
        self._thread = _OneThread()
        self._buf: np.ndarray | None = None
        self._connected = False
        self._seq = 0
        self.frames_dropped = 0

    def _target(self) -> str:
        return repr(self.cfg.name) if self.cfg.name else "(active sender)"

    def open(self) -> None:
        mod = load_spout()
        self._mod = mod
        fmt_name = "GL_BGRA_EXT" if self.cfg.pixel_format == "bgra" else "GL_RGBA"
        self._gl_fmt = _gl_format(
            mod, fmt_name, _GL_BGRA_EXT if fmt_name == "GL_BGRA_EXT" else _GL_RGBA
        )
        self._fmt = PixelFormat.BGRA if self.cfg.pixel_format == "bgra" else PixelFormat.RGBA
        recv = mod.SpoutReceiver()
        self._thread.claim()
        self._recv = recv
        try:
            if not recv.createOpenGL():
                raise BackendUnavailable(
                    "Spout could not create its hidden OpenGL context on this thread "
                    "(no GPU driver, or running outside a user session?)"
                )
            recv.setReceiverName(self.cfg.name)
            # a receive without a buffer connects and reports the sender's size
            if not recv.receiveImage(None, self._gl_fmt, self.cfg.flip, 0):
                senders = _sender_list(recv)
                raise SourceGone(
                    f"Spout sender {self._target()} not found (senders: "
                    f"{', '.join(map(repr, senders)) or 'none'})"
                )
            self._connected = True
            recv.isUpdated()  # clear the "connected/resized" flag: we size the buffer now
            self._reallocate()
        except BaseException:
            self.close()
            raise
        self._seq = 0
        log.info("Spout source connected to %s", self._target())

    def _reallocate(self) -> None:
        w, h = int(self._recv.getSenderWidth()), int(self._recv.getSenderHeight())
        if 0 < w <= _MAX_SIDE and 0 < h <= _MAX_SIDE:
            self._buf = np.zeros((h, w, 4), np.uint8)
            log.info("Spout sender %s is %dx%d", self._target(), w, h)
        else:
            self._buf = None
            log.warning("Spout sender %s reports an unusable size %dx%d", self._target(), w, h)

    def read(self, timeout: float) -> Frame | None:
        recv = self._recv
        if recv is None:
            raise RuntimeError("SpoutSource.read() called before open()")
        self._thread.check("read()")
        deadline = time.monotonic() + max(0.0, timeout)
        poll = self.cfg.poll_interval_ms / 1000.0
        while True:
            buf = self._buf
            updated = False
            try:
                ok = recv.receiveImage(buf, self._gl_fmt, self.cfg.flip, 0)
            except BufferError:  # sender grew between our size query and the copy
                ok, updated = True, True
            if not ok:
                was = self._connected
                self._connected = False
                raise SourceGone(
                    f"Spout sender {self._target()} {'closed' if was else 'not available'}"
                )
            self._connected = True
            if recv.isUpdated() or updated:
                self._reallocate()  # nothing was copied by this receive: go again at once
                if time.monotonic() >= deadline:
                    return None
                continue
            if buf is not None and recv.isFrameNew():
                self._buf = np.empty_like(buf)  # the next receive must not overwrite this frame
                seq = self._seq
                self._seq += 1
                return Frame(data=buf, fmt=self._fmt, seq=seq, t_capture=time.monotonic())
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(poll, left))

    def close(self) -> None:
        recv = self._recv
        if recv is None:
            return
        self._thread.check("close()")
        self._recv = None
        self._buf = None
        self._connected = False
        try:
            recv.releaseReceiver()
        finally:
            recv.closeOpenGL()
            self._thread.release()

    def describe(self) -> str:
        return f"spout:{self.cfg.name or '(active)'}"


def _sender_list(obj: Any) -> list[str]:
    getter = getattr(obj, "getSenderList", None)
    if getter is None:
        return []
    try:
        return [str(n) for n in getter()]
    except Exception as exc:  # only used for messages
        log.debug("Spout getSenderList failed: %s", exc)
        return []


def list_senders(timeout: float) -> list[str]:
    """Names of the Spout senders on this machine (``timeout`` is unused: the list is local)."""
    mod = load_spout()
    recv = mod.SpoutReceiver()
    if not hasattr(recv, "getSenderList"):
        raise BackendUnavailable("this SpoutGL version cannot list senders; upgrade SpoutGL")
    try:
        recv.createOpenGL()
        return sorted(_sender_list(recv))
    finally:
        try:
            recv.releaseReceiver()
        finally:
            recv.closeOpenGL()


# -- sink ----------------------------------------------------------------------------------------
class SpoutSinkConfig(SinkConfig):
    """Publish the output as a Spout sender (Windows, ``spout`` extra)."""

    type: Literal["spout"] = "spout"
    name: str = Field("streambridge", min_length=1, max_length=255, description="Sender name.")
    flip: bool = Field(False, description="Flip vertically while sending.")
    max_failures: int = Field(
        30,
        ge=1,
        le=100_000,
        description="Consecutive frames Spout may refuse before send() raises SinkFailed.",
    )


class SpoutSink(FrameSink):
    kind = "spout"

    def __init__(self, cfg: SpoutSinkConfig | None = None) -> None:
        self.cfg = cfg or SpoutSinkConfig()
        self._sender: Any = None
        self._thread = _OneThread()
        self._buf: np.ndarray | None = None
        self._failures = 0
        self.frames_sent = 0
        self.frames_refused = 0

    def open(self, width: int, height: int, fps: float) -> None:
        mod = load_spout()
        self._gl_rgba = _gl_format(mod, "GL_RGBA", _GL_RGBA)
        sender = mod.SpoutSender()
        self._thread.claim()
        self._sender = sender
        try:
            if not sender.createOpenGL():
                raise BackendUnavailable(
                    "Spout could not create its hidden OpenGL context on this thread "
                    "(no GPU driver, or running outside a user session?)"
                )
            sender.setSenderName(self.cfg.name)
            if hasattr(sender, "setCPUshare"):
                sender.setCPUshare(True)
        except BaseException:
            self.close()
            raise
        self._buf = np.zeros((height, width, 4), np.uint8) if width > 0 and height > 0 else None
        self._failures = 0
        log.info("Spout sender %r open (%dx%d)", self.cfg.name, width, height)

    def send(self, rgb: np.ndarray) -> None:
        sender = self._sender
        if sender is None:
            raise RuntimeError("SpoutSink.send() called before open()")
        self._thread.check("send()")
        rgb = as_rgb(rgb)
        h, w = rgb.shape[:2]
        if self._buf is None or self._buf.shape[:2] != (h, w):
            self._buf = np.zeros((h, w, 4), np.uint8)
        cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA, dst=self._buf)
        if sender.sendImage(self._buf, w, h, self._gl_rgba, self.cfg.flip, 0):
            if self._failures:
                log.info("Spout sender %r accepts frames again", self.cfg.name)
            self._failures = 0
            self.frames_sent += 1
            sync = getattr(sender, "setFrameSync", None)
            if sync is not None:
                sync(self.cfg.name)
            return
        self._failures += 1
        self.frames_refused += 1
        if self._failures == 1:
            log.warning(
                "Spout refused a %dx%d frame for sender %r (CPU share: %s)",
                w,
                h,
                self.cfg.name,
                getattr(sender, "getCPUshare", lambda: "?")(),
            )
        if self._failures >= self.cfg.max_failures:
            raise SinkFailed(
                f"Spout refused {self._failures} frames in a row for sender {self.cfg.name!r}"
            )

    def close(self) -> None:
        sender = self._sender
        if sender is None:
            return
        self._thread.check("close()")
        self._sender = None
        try:
            sender.releaseSender()
        finally:
            sender.closeOpenGL()
            self._thread.release()

    def describe(self) -> str:
        return f"spout:{self.cfg.name}"
