"""Syphon source and sink (macOS 12+) through ``syphon-python``'s Metal classes, imported lazily.

* Finding a server: ``SyphonServerDirectory().servers`` spins the Cocoa run loop (about a second
  by default), so it is used only in ``open()`` and :func:`list_senders`, never in ``read()``.
* Receiving: ``SyphonMetalClient(description)``; ``has_new_frame`` / ``new_frame_image`` give a
  Metal texture, copied out with ``syphon.utils.numpy.copy_mtl_texture_to_image`` which keeps the
  texture's channel order (BGRA8 textures give BGRA, RGBA8 ones RGBA). A client that stops being
  valid means the server went away: :class:`SourceGone`.
* Sending: ``SyphonMetalServer(name)``, one RGBA8 texture from ``syphon.utils.raw.create_mtl_texture``
  (recreated when the frame size changes), filled with ``copy_image_to_mtl_texture`` and
  published with ``publish_frame_texture``.
* The Metal path needs no window or GL context; it runs as a logged-in user's process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field

from bridge.io._common import SinkConfig, SourceConfig, as_rgb, import_optional
from bridge.io.base import Frame, FrameSink, FrameSource, PixelFormat, SourceGone

log = logging.getLogger(__name__)

# Apple's MTLPixelFormat values (stable ABI): no need to import pyobjc's Metal module for them
MTL_PIXEL_FORMAT_RGBA8_UNORM = 70
MTL_PIXEL_FORMAT_BGRA8_UNORM = 80
_MTL_FORMATS = {
    MTL_PIXEL_FORMAT_RGBA8_UNORM: PixelFormat.RGBA,
    MTL_PIXEL_FORMAT_BGRA8_UNORM: PixelFormat.BGRA,
}


def _load(module: str = "syphon") -> ModuleType:
    return import_optional(module, kind="Syphon", extra="syphon", platform="darwin")


def _directory(syphon: ModuleType, interval: float) -> Any:
    directory = syphon.SyphonServerDirectory()
    if hasattr(directory, "run_loop_interval"):
        directory.run_loop_interval = interval
    return directory


def _label(desc: Any) -> str:
    return str(desc.name) or str(desc.app_name)


def match_server(servers: Sequence[Any], name: str, app: str = "") -> Any | None:
    """The server whose name (or, failing that, application name) is ``name``, optionally only
    among ``app``'s servers; exact match first, then case-insensitive. Empty name: the first."""
    pool = list(servers)
    if app:
        pool = [s for s in pool if str(s.app_name).casefold() == app.casefold()]
    if not name:
        return pool[0] if pool else None
    for same in (lambda a, b: a == b, lambda a, b: a.casefold() == b.casefold()):
        for field in ("name", "app_name"):
            for s in pool:
                if same(str(getattr(s, field)), name):
                    return s
    return None


def list_senders(timeout: float) -> list[str]:
    """Names of the Syphon servers visible now (asking spins the run loop for ``timeout`` s)."""
    syphon = _load()
    directory = _directory(syphon, max(0.05, min(timeout, 10.0)))
    return sorted(_label(s) for s in directory.servers)


# -- source --------------------------------------------------------------------------------------
class SyphonSourceConfig(SourceConfig):
    """Receive a Syphon server (macOS, ``syphon`` extra)."""

    type: Literal["syphon"] = "syphon"
    name: str = Field(
        "",
        max_length=255,
        description="Server name, or application name, to receive; empty takes the first server.",
    )
    app: str = Field("", max_length=255, description="Only consider this application's servers.")
    discovery_timeout: float = Field(
        1.0,
        ge=0.05,
        le=10.0,
        description="Seconds open() lets the server directory update before looking.",
    )
    poll_interval_ms: float = Field(
        1.0, ge=0.1, le=50.0, description="How often read() checks for a new frame while waiting."
    )


class SyphonSource(FrameSource):
    kind = "syphon"

    def __init__(self, cfg: SyphonSourceConfig | None = None) -> None:
        self.cfg = cfg or SyphonSourceConfig()
        self._client: Any = None
        self._np_utils: ModuleType | None = None
        self._server_label = ""
        self._seq = 0
        self._warned: set[int] = set()
        self.frames_dropped = 0

    def open(self) -> None:
        syphon = _load()
        np_utils = _load("syphon.utils.numpy")
        directory = _directory(syphon, self.cfg.discovery_timeout)
        servers = list(directory.servers)  # spins the run loop: open() only
        desc = match_server(servers, self.cfg.name, self.cfg.app)
        if desc is None:
            visible = ", ".join(repr(_label(s)) for s in servers) or "none"
            wanted = repr(self.cfg.name) if self.cfg.name else "(any)"
            raise SourceGone(f"Syphon server {wanted} not found (servers: {visible})")
        self._client = syphon.SyphonMetalClient(desc)
        self._np_utils = np_utils
        self._server_label = f"{desc.app_name}: {desc.name}" if desc.name else str(desc.app_name)
        self._seq = 0
        log.info("Syphon source connected to %s", self._server_label)

    def read(self, timeout: float) -> Frame | None:
        client, np_utils = self._client, self._np_utils
        if client is None or np_utils is None:
            raise RuntimeError("SyphonSource.read() called before open()")
        deadline = time.monotonic() + max(0.0, timeout)
        poll = self.cfg.poll_interval_ms / 1000.0
        while True:
            if not client.is_valid:
                raise SourceGone(f"Syphon server {self._server_label!r} went away")
            if client.has_new_frame:
                texture = client.new_frame_image
                frame = self._to_frame(texture, np_utils) if texture is not None else None
                if frame is not None:
                    return frame
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(poll, left))

    def _to_frame(self, texture: Any, np_utils: ModuleType) -> Frame | None:
        t_capture = time.monotonic()
        pixel_format = int(texture.pixelFormat())
        fmt = _MTL_FORMATS.get(pixel_format)
        if fmt is None:
            self.frames_dropped += 1
            if pixel_format not in self._warned:
                self._warned.add(pixel_format)
                log.warning("Syphon texture with MTLPixelFormat %d dropped", pixel_format)
            return None
        image = np_utils.copy_mtl_texture_to_image(texture)
        w, h = int(texture.width()), int(texture.height())
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.shape != (h, w, 4)
            or w < 1
            or h < 1
        ):
            self.frames_dropped += 1
            log.warning("Syphon frame with inconsistent geometry dropped")
            return None
        seq = self._seq
        self._seq += 1
        return Frame(data=image, fmt=fmt, seq=seq, t_capture=t_capture)

    def close(self) -> None:
        client = self._client
        self._client = None
        if client is not None:
            client.stop()

    def describe(self) -> str:
        return f"syphon:{self._server_label or self.cfg.name or '(first)'}"


# -- sink ----------------------------------------------------------------------------------------
class SyphonSinkConfig(SinkConfig):
    """Publish the output as a Syphon server (macOS, ``syphon`` extra)."""

    type: Literal["syphon"] = "syphon"
    name: str = Field("streambridge", min_length=1, max_length=255, description="Server name.")
    flip: bool = Field(False, description="Publish the frame flipped vertically.")


class SyphonSink(FrameSink):
    kind = "syphon"

    def __init__(self, cfg: SyphonSinkConfig | None = None) -> None:
        self.cfg = cfg or SyphonSinkConfig()
        self._server: Any = None
        self._texture: Any = None
        self._buf: np.ndarray | None = None
        self.frames_sent = 0

    def open(self, width: int, height: int, fps: float) -> None:
        syphon = _load()
        self._raw = _load("syphon.utils.raw")
        self._np_utils = _load("syphon.utils.numpy")
        self._server = syphon.SyphonMetalServer(self.cfg.name)
        if width > 0 and height > 0:
            self._allocate(width, height)
        log.info("Syphon server %r open (%dx%d)", self.cfg.name, width, height)

    def _allocate(self, width: int, height: int) -> None:
        self._texture = self._raw.create_mtl_texture(self._server.device, width, height)
        self._buf = np.zeros((height, width, 4), np.uint8)

    def send(self, rgb: np.ndarray) -> None:
        server = self._server
        if server is None:
            raise RuntimeError("SyphonSink.send() called before open()")
        rgb = as_rgb(rgb)
        h, w = rgb.shape[:2]
        if self._buf is None or self._buf.shape[:2] != (h, w):
            self._allocate(w, h)
        assert self._buf is not None
        cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA, dst=self._buf)
        self._np_utils.copy_image_to_mtl_texture(self._buf, self._texture)
        server.publish_frame_texture(self._texture, is_flipped=self.cfg.flip)
        self.frames_sent += 1

    def close(self) -> None:
        server = self._server
        self._server = None
        self._texture = None
        if server is not None:
            server.stop()

    def describe(self) -> str:
        return f"syphon:{self.cfg.name}"
