"""``FakeSpoutGL``: a stand-in for the ``SpoutGL`` package (PyPI SpoutGL 0.1.x, jlai/Python-SpoutGL,
a pybind11 wrapper of the Spout 2.007 SDK) that runs anywhere.

It follows the wrapper's documented behaviour, including its traps:

* Every object needs ``createOpenGL()`` first, and every later call on the thread that created the
  context. Calls before it, or from another thread, are recorded in ``SpoutWorld.violations`` and
  fail the way Spout without a current GL context fails (False / 0).
* ``SpoutReceiver.receiveImage(buffer|None, glFormat, invert, hostFbo) -> bool``: the wrapper first
  checks the buffer against the size the receiver last saw (``BufferError("Buffer not large
  enough")``, ``BufferError("Buffer must be contiguous")``); ``None`` or an empty buffer only
  connects / checks for updates. On (re)connection or a sender resize the call sets the updated
  flag and copies nothing. It returns True even when there is no new frame (``isFrameNew()`` tells)
  and False when the sender does not exist (any more).
* ``isUpdated()`` returns and clears the updated flag. ``getSenderName`` is mis-wired and returns
  the sender *width* (an int), as in SpoutGL 0.1.x.
* ``SpoutSender.sendImage(buffer, width, height, glFormat, invert, hostFbo) -> bool``: same buffer
  checks (``width*height*bpp`` bytes, C-contiguous), and returns False unless CPU share is on or the
  system is GL/DX-interop capable (``SpoutWorld.gldx_ready``, False by default: the headless case).
* ``SpoutGL.enums`` holds ``GL_RGBA``, ``GL_BGRA_EXT``, ``GL_RGB``, ``GL_BGR_EXT``.

The :class:`SpoutWorld` plays the machine-wide shared memory: senders created through the fake
sender (or by :meth:`SpoutWorld.publish`, standing in for another application) are what fake
receivers see.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

GL_RGBA = 0x1908
GL_BGRA_EXT = 0x80E1
GL_RGB = 0x1907
GL_BGR_EXT = 0x80E0
_BPP = {GL_RGBA: 4, GL_BGRA_EXT: 4, GL_RGB: 3, GL_BGR_EXT: 3}


def _bytes_per_pixel(fmt: int) -> int:
    if fmt not in _BPP:
        raise ValueError("Unknown GL format")  # pybind11 maps std::invalid_argument to ValueError
    return _BPP[fmt]


def _to_rgba(buffer: Any, width: int, height: int, fmt: int, invert: bool) -> np.ndarray:
    bpp = _bytes_per_pixel(fmt)
    flat = np.frombuffer(buffer, dtype=np.uint8, count=width * height * bpp)
    img = flat.reshape(height, width, bpp)
    if fmt in (GL_BGRA_EXT, GL_BGR_EXT):
        img = img[..., [2, 1, 0] + ([3] if bpp == 4 else [])]
    if bpp == 3:
        img = np.concatenate([img, np.full((height, width, 1), 255, np.uint8)], axis=2)
    if invert:
        img = img[::-1]
    return np.ascontiguousarray(img)


def _from_rgba(rgba: np.ndarray, fmt: int, invert: bool) -> np.ndarray:
    img = rgba[::-1] if invert else rgba
    if fmt == GL_BGRA_EXT:
        img = img[..., [2, 1, 0, 3]]
    elif fmt == GL_RGB:
        img = img[..., :3]
    elif fmt == GL_BGR_EXT:
        img = img[..., [2, 1, 0]]
    return np.ascontiguousarray(img)


@dataclass
class SharedSender:
    name: str
    width: int
    height: int
    frame: int = 0
    pixels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 4), np.uint8))


@dataclass(frozen=True)
class Call:
    obj: str
    method: str
    thread: int
    args: tuple[Any, ...] = ()


class SpoutWorld:
    """Machine-wide Spout state plus a log of every call made through the fake."""

    def __init__(self, gldx_ready: bool = False) -> None:
        self.senders: dict[str, SharedSender] = {}
        self.active: str | None = None
        self.gldx_ready = gldx_ready
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.sent: list[dict[str, Any]] = []  # what every sendImage call was given
        self._lock = threading.Lock()
        self._ids = 0

    # -- test helpers (another application on the machine) -----------------------------------
    def publish(self, name: str, rgba: np.ndarray) -> None:
        """Another app sends ``rgba`` (H x W x 4) as sender ``name``."""
        with self._lock:
            h, w = rgba.shape[:2]
            s = self.senders.get(name)
            if s is None:
                s = self.senders[name] = SharedSender(name, w, h)
                if self.active is None:
                    self.active = name
            s.width, s.height = w, h
            s.pixels = np.array(rgba, dtype=np.uint8, copy=True)
            s.frame += 1

    def close_sender(self, name: str) -> None:
        with self._lock:
            self.senders.pop(name, None)
            if self.active == name:
                self.active = next(iter(self.senders), None)

    def calls_on(self, obj: str) -> list[Call]:
        return [c for c in self.calls if c.obj == obj]

    def objects(self, prefix: str) -> list[str]:
        return list(dict.fromkeys(c.obj for c in self.calls if c.obj.startswith(prefix)))

    def _new_id(self, kind: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{kind}#{self._ids}"


class _GLObject:
    _world: SpoutWorld
    _kind = "object"

    def __init__(self) -> None:
        self._id = self._world._new_id(self._kind)
        self._gl_thread: int | None = None
        self._cpu_share = False
        self._auto_share = True

    def _record(self, method: str, *args: Any) -> bool:
        """Log the call; False when Spout would have no usable GL context for it."""
        me = threading.get_ident()
        self._world.calls.append(Call(self._id, method, me, args))
        if method == "createOpenGL":
            return True
        if self._gl_thread is None:
            self._world.violations.append(f"{self._id}.{method} called before createOpenGL")
            return False
        if me != self._gl_thread:
            self._world.violations.append(
                f"{self._id}.{method} called from thread {me}, GL context is on {self._gl_thread}"
            )
            return False
        return True

    def createOpenGL(self) -> bool:
        self._record("createOpenGL")
        if self._gl_thread is not None and self._gl_thread != threading.get_ident():
            self._world.violations.append(f"{self._id}.createOpenGL on a second thread")
        self._gl_thread = threading.get_ident()
        return True

    def closeOpenGL(self) -> bool:
        ok = self._record("closeOpenGL")
        self._gl_thread = None
        return ok

    def setCPUshare(self, on: bool) -> None:
        if self._record("setCPUshare", on):
            self._cpu_share = bool(on)

    def getCPUshare(self) -> bool:
        return self._record("getCPUshare") and self._cpu_share

    def isGLDXReady(self) -> bool:
        return self._record("isGLDXReady") and self._world.gldx_ready

    def getAutoShare(self) -> bool:
        return self._record("getAutoShare") and self._auto_share

    def setAutoShare(self, on: bool) -> None:
        if self._record("setAutoShare", on):
            self._auto_share = bool(on)


class _FakeSpoutReceiver(_GLObject):
    _kind = "receiver"

    def __init__(self) -> None:
        super().__init__()
        self._name: str | None = None
        self._connected: str | None = None
        self._w = 0
        self._h = 0
        self._last_frame = -1
        self._updated = False
        self._frame_new = False

    def __enter__(self) -> _FakeSpoutReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.releaseReceiver()

    def setReceiverName(self, name: str) -> None:
        self._record("setReceiverName", name)
        self._name = name

    def releaseReceiver(self) -> None:
        self._record("releaseReceiver")
        self._connected = None
        self._w = self._h = 0
        self._frame_new = False

    def receiveImage(self, buffer: Any, glFormat: int, invert: bool, hostFbo: int) -> bool:
        ok = self._record("receiveImage", None if buffer is None else memoryview(buffer).nbytes)
        bpp = _bytes_per_pixel(glFormat)
        if buffer is not None:
            view = memoryview(buffer)
            if view.nbytes == 0:
                buffer = None
            else:
                if view.nbytes < self._w * self._h * bpp:
                    raise BufferError("Buffer not large enough")
                if not view.c_contiguous:
                    raise BufferError("Buffer must be contiguous")
        if not ok:
            return False
        world = self._world
        target = self._name if self._name else world.active
        sender = world.senders.get(target) if target else None
        if sender is None:
            self._connected = None
            self._frame_new = False
            return False
        if self._connected != sender.name or (sender.width, sender.height) != (self._w, self._h):
            self._connected = sender.name
            self._w, self._h = sender.width, sender.height
            self._updated = True
            self._frame_new = False
            self._last_frame = -1
            return True  # connected or resized: nothing copied this time
        if sender.frame != self._last_frame:
            self._last_frame = sender.frame
            self._frame_new = True
            if buffer is not None and sender.width and sender.height:
                out = _from_rgba(sender.pixels, glFormat, invert).reshape(-1)
                dst = np.frombuffer(buffer, dtype=np.uint8)
                dst[: out.size] = out
        else:
            self._frame_new = False
        return True

    def isUpdated(self) -> bool:
        if not self._record("isUpdated"):
            return False
        updated, self._updated = self._updated, False
        return updated

    def isFrameNew(self) -> bool:
        return self._record("isFrameNew") and self._frame_new

    def isConnected(self) -> bool:
        return self._record("isConnected") and self._connected is not None

    def getSenderWidth(self) -> int:
        return self._w if self._record("getSenderWidth") else 0

    def getSenderHeight(self) -> int:
        return self._h if self._record("getSenderHeight") else 0

    def getSenderName(self) -> int:
        """Mis-wired in SpoutGL 0.1.x: bound to GetSenderWidth."""
        return self._w if self._record("getSenderName") else 0

    def getSenderFrame(self) -> int:
        return self._last_frame if self._record("getSenderFrame") else 0

    def getSenderList(self) -> list[str]:
        self._record("getSenderList")
        return list(self._world.senders)

    def getActiveSender(self) -> str:
        self._record("getActiveSender")
        return self._world.active or ""

    def setFrameSync(self, name: str) -> None:
        self._record("setFrameSync", name)

    def waitFrameSync(self, senderName: str, timeout: int = 0) -> bool:
        self._record("waitFrameSync", senderName, timeout)
        return senderName in self._world.senders


class _FakeSpoutSender(_GLObject):
    _kind = "sender"

    def __init__(self) -> None:
        super().__init__()
        self._name = ""
        self._frames = 0

    def __enter__(self) -> _FakeSpoutSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.releaseSender()

    def setSenderName(self, name: str) -> None:
        self._record("setSenderName", name)
        self._name = name

    def releaseSender(self) -> None:
        self._record("releaseSender")
        if self._name:
            self._world.close_sender(self._name)

    def sendImage(
        self, buffer: Any, width: int, height: int, glFormat: int, invert: bool, hostFbo: int
    ) -> bool:
        ok = self._record("sendImage", width, height, glFormat, invert, hostFbo)
        view = memoryview(buffer)
        self._world.sent.append(
            {
                "nbytes": view.nbytes,
                "contiguous": view.c_contiguous,
                "width": width,
                "height": height,
                "format": glFormat,
            }
        )
        bpp = _bytes_per_pixel(glFormat)
        if view.nbytes < width * height * bpp:
            raise BufferError("Buffer not large enough")
        if not view.c_contiguous:
            raise BufferError("Buffer must be contiguous")
        if not ok:
            return False
        if not (self._cpu_share or self._world.gldx_ready):
            return False  # the documented trap: no GL/DX interop and CPU share off
        self._world.publish(
            self._name or "python", _to_rgba(buffer, width, height, glFormat, invert)
        )
        self._frames += 1
        return True

    def getFrame(self) -> int:
        return self._frames if self._record("getFrame") else 0

    def setFrameSync(self, name: str) -> None:
        self._record("setFrameSync", name)

    def getCPU(self) -> bool:
        return self._record("getCPU") and self._cpu_share

    def getGLDX(self) -> bool:
        return self._record("getGLDX") and self._world.gldx_ready


class FakeSpoutGL(ModuleType):
    """The fake ``SpoutGL`` module; ``world`` is the shared state it reads and writes."""

    def __init__(self, world: SpoutWorld, *, cpu_share_api: bool = True) -> None:
        super().__init__("SpoutGL", "Fake SpoutGL (tests/io/fakes/fake_spoutgl.py)")
        self.world = world
        receiver = type("SpoutReceiver", (_FakeSpoutReceiver,), {"_world": world})
        sender_ns: dict[str, Any] = {"_world": world}
        if not cpu_share_api:  # an older wrapper without setCPUshare/getCPUshare
            for name in ("setCPUshare", "getCPUshare"):
                sender_ns[name] = property(_missing(name))
        sender = type("SpoutSender", (_FakeSpoutSender,), sender_ns)
        self.SpoutReceiver = receiver
        self.SpoutSender = sender
        enums = ModuleType("SpoutGL.enums")
        enums.GL_RGBA = GL_RGBA  # type: ignore[attr-defined]
        enums.GL_BGRA_EXT = GL_BGRA_EXT  # type: ignore[attr-defined]
        enums.GL_RGB = GL_RGB  # type: ignore[attr-defined]
        enums.GL_BGR_EXT = GL_BGR_EXT  # type: ignore[attr-defined]
        helpers = ModuleType("SpoutGL.helpers")
        helpers.getBytesPerPixel = _bytes_per_pixel  # type: ignore[attr-defined]
        helpers.isBufferEmpty = lambda buf: not np.frombuffer(buf, np.uint8).any()  # type: ignore[attr-defined]
        self.enums = enums
        self.helpers = helpers

    def install(self, monkeypatch: Any) -> None:
        monkeypatch.setitem(sys.modules, "SpoutGL", self)
        monkeypatch.setitem(sys.modules, "SpoutGL.enums", self.enums)
        monkeypatch.setitem(sys.modules, "SpoutGL.helpers", self.helpers)


def _missing(name: str) -> Any:
    def getter(self: Any) -> Any:
        raise AttributeError(name)

    return getter
