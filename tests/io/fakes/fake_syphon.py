"""``FakeSyphon``: a stand-in for the ``syphon`` package (PyPI syphon-python 0.2.x,
cansik/syphon-python) and its ``syphon.utils.numpy`` / ``syphon.utils.raw`` helpers.

Faithful to the documented API:

* ``SyphonServerDirectory()`` with ``run_loop_interval`` (1.0 s) and a ``servers`` property
  returning ``SyphonServerDescription(uuid, name, app_name, icon, raw)``; every access would spin
  the Cocoa run loop for ``run_loop_interval``, so the fake counts accesses
  (``SyphonWorld.directory_reads``) instead of sleeping.
* ``SyphonMetalClient(description, device=None)`` with ``is_valid``, ``has_new_frame``,
  ``new_frame_image`` (properties) and ``stop()``.
* ``SyphonMetalServer(name, device=None, command_queue=None)`` with ``device``,
  ``publish_frame_texture(texture, region=None, size=None, is_flipped=False,
  command_buffer=None, auto_commit=True)``, ``has_clients``, ``publish()``, ``stop()``.
* Metal textures answer ``width()``, ``height()``, ``pixelFormat()``
  (70 = MTLPixelFormatRGBA8Unorm, 80 = MTLPixelFormatBGRA8Unorm).
* ``syphon.utils.raw.create_mtl_texture(device, width, height, pixel_format=RGBA8Unorm)``.
* ``syphon.utils.numpy.copy_image_to_mtl_texture(image, texture)`` (asserts an (m, n, 4) image,
  copies ``image.tobytes()`` row by row at ``width*4`` bytes per row) and
  ``copy_mtl_texture_to_image(texture)`` (raises unless BGRA8/RGBA8; returns a read-only
  ``np.frombuffer`` array of shape (height, width, 4) in the texture's own channel order).
"""

from __future__ import annotations

import sys
import threading
import uuid as _uuid
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

RGBA8 = 70
BGRA8 = 80


class FakeTexture:
    def __init__(self, width: int, height: int, pixel_format: int = RGBA8) -> None:
        self._w, self._h, self._fmt = width, height, pixel_format
        self.data = np.zeros((height, width, 4), np.uint8)

    def width(self) -> int:
        return self._w

    def height(self) -> int:
        return self._h

    def pixelFormat(self) -> int:
        return self._fmt


class FakeDevice:
    name = "Fake Metal Device"


@dataclass
class SyphonServerDescription:
    uuid: str
    name: str
    app_name: str
    icon: Any
    raw: Any


class _Entry:
    def __init__(self, name: str, app_name: str) -> None:
        self.uuid = str(_uuid.uuid4())
        self.name = name
        self.app_name = app_name
        self.frame = 0
        self.texture: FakeTexture | None = None
        self.alive = True
        self.clients = 0


class SyphonWorld:
    """Servers on the fake machine plus a log of calls (method, thread id)."""

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.directory_reads = 0
        self.calls: list[tuple[str, int]] = []
        self.published: list[dict[str, Any]] = []
        self.copied_images: list[dict[str, Any]] = []

    def log(self, method: str) -> None:
        self.calls.append((method, threading.get_ident()))

    # -- test helpers (another application on the machine) -----------------------------------
    def publish(
        self, name: str, app_name: str, image: np.ndarray, pixel_format: int = BGRA8
    ) -> None:
        entry = self._entry(name, app_name, create=True)
        h, w = image.shape[:2]
        tex = FakeTexture(w, h, pixel_format)
        tex.data = np.array(image, dtype=np.uint8, copy=True)
        entry.texture = tex
        entry.frame += 1

    def retire(self, name: str) -> None:
        for e in self.entries:
            if e.name == name:
                e.alive = False
        self.entries = [e for e in self.entries if e.alive]

    def _entry(self, name: str, app_name: str, create: bool) -> _Entry:
        for e in self.entries:
            if e.name == name and e.app_name == app_name and e.alive:
                return e
        if not create:
            raise KeyError(name)
        e = _Entry(name, app_name)
        self.entries.append(e)
        return e


class FakeSyphon(ModuleType):
    """The fake ``syphon`` module; submodules ``syphon.utils.numpy`` and ``syphon.utils.raw``."""

    def __init__(self, world: SyphonWorld, app_name: str = "Python") -> None:
        super().__init__("syphon", "Fake syphon-python (tests/io/fakes/fake_syphon.py)")
        self.world = world
        self.SyphonServerDescription = SyphonServerDescription

        class SyphonServerDirectory:
            def __init__(self) -> None:
                self.run_loop_interval: float = 1.0

            @property
            def servers(self) -> list[SyphonServerDescription]:
                world.log("SyphonServerDirectory.servers")
                world.directory_reads += 1
                return [
                    SyphonServerDescription(e.uuid, e.name, e.app_name, None, e)
                    for e in world.entries
                    if e.alive
                ]

            def servers_matching_name(
                self, name: str | None = None, app_name: str | None = None
            ) -> list[SyphonServerDescription]:
                return [
                    s
                    for s in self.servers
                    if (name is not None and s.name == name)
                    or (app_name is not None and s.app_name == app_name)
                ]

        class SyphonMetalClient:
            def __init__(self, description: SyphonServerDescription, device: Any = None) -> None:
                world.log("SyphonMetalClient.__init__")
                self.device = device or FakeDevice()
                self._entry: _Entry = description.raw
                self._seen = 0  # a new client gets the current frame as its first new frame
                self._stopped = False
                self._entry.clients += 1

            @property
            def is_valid(self) -> bool:
                world.log("SyphonMetalClient.is_valid")
                return not self._stopped and self._entry.alive

            @property
            def has_new_frame(self) -> bool:
                world.log("SyphonMetalClient.has_new_frame")
                return self.is_valid and self._entry.frame > self._seen

            @property
            def new_frame_image(self) -> FakeTexture | None:
                world.log("SyphonMetalClient.new_frame_image")
                tex = self._entry.texture
                if tex is None or not self.is_valid:
                    return None
                self._seen = self._entry.frame
                out = FakeTexture(tex.width(), tex.height(), tex.pixelFormat())
                out.data = tex.data.copy()
                return out

            def stop(self) -> None:
                world.log("SyphonMetalClient.stop")
                if not self._stopped:
                    self._entry.clients -= 1
                self._stopped = True

        class SyphonMetalServer:
            def __init__(self, name: str, device: Any = None, command_queue: Any = None) -> None:
                world.log("SyphonMetalServer.__init__")
                self.name = name
                self.device = device or FakeDevice()
                self.command_queue = command_queue
                self._entry = world._entry(name, app_name, create=True)

            def publish_frame_texture(
                self,
                texture: FakeTexture,
                region: Any = None,
                size: Any = None,
                is_flipped: bool = False,
                command_buffer: Any = None,
                auto_commit: bool = True,
            ) -> None:
                world.log("SyphonMetalServer.publish_frame_texture")
                if not isinstance(texture, FakeTexture):
                    raise TypeError("publish_frame_texture needs an MTLTexture")
                world.published.append(
                    {"width": texture.width(), "height": texture.height(), "flipped": is_flipped}
                )
                tex = FakeTexture(texture.width(), texture.height(), texture.pixelFormat())
                tex.data = texture.data[::-1].copy() if is_flipped else texture.data.copy()
                self._entry.texture = tex
                self._entry.frame += 1

            def publish(self) -> None:
                world.log("SyphonMetalServer.publish")

            @property
            def has_clients(self) -> bool:
                return self._entry.clients > 0

            def stop(self) -> None:
                world.log("SyphonMetalServer.stop")
                world.retire(self.name)

        self.SyphonServerDirectory = SyphonServerDirectory
        self.SyphonMetalClient = SyphonMetalClient
        self.SyphonMetalServer = SyphonMetalServer

        utils = ModuleType("syphon.utils")
        raw = ModuleType("syphon.utils.raw")
        np_utils = ModuleType("syphon.utils.numpy")

        def create_mtl_texture(
            device: Any, width: int, height: int, pixel_format: int = RGBA8
        ) -> FakeTexture:
            world.log("raw.create_mtl_texture")
            if not isinstance(device, FakeDevice):
                raise TypeError("create_mtl_texture needs an MTLDevice")
            return FakeTexture(width, height, pixel_format)

        def copy_image_to_mtl_texture(image: np.ndarray, texture: FakeTexture) -> None:
            world.log("numpy.copy_image_to_mtl_texture")
            assert len(image.shape) == 3, "Image has to be of shape (m, n, 4)"
            assert image.shape[2] == 4, "Image has to be of shape (m, n, 4)"
            data = image.tobytes()
            world.copied_images.append(
                {"shape": tuple(image.shape), "contiguous": bool(image.flags.c_contiguous)}
            )
            need = texture.width() * texture.height() * 4
            if len(data) != need:  # Metal would read past / short of the bytes: refuse loudly
                raise ValueError(f"image has {len(data)} bytes, texture needs {need}")
            texture.data = (
                np.frombuffer(data, np.uint8).reshape(texture.height(), texture.width(), 4).copy()
            )

        def copy_mtl_texture_to_image(texture: FakeTexture) -> np.ndarray:
            world.log("numpy.copy_mtl_texture_to_image")
            if texture.pixelFormat() not in (RGBA8, BGRA8):
                raise Exception(
                    "Not correct pixel format (expected MTLPixelFormatBGRA8Unorm or "
                    "MTLPixelFormatRGBA8Unorm)"
                )
            data = texture.data.tobytes()
            return np.frombuffer(data, dtype=np.uint8).reshape(
                (texture.height(), texture.width(), 4)
            )

        raw.create_mtl_texture = create_mtl_texture  # type: ignore[attr-defined]
        np_utils.copy_image_to_mtl_texture = copy_image_to_mtl_texture  # type: ignore[attr-defined]
        np_utils.copy_mtl_texture_to_image = copy_mtl_texture_to_image  # type: ignore[attr-defined]
        utils.raw = raw  # type: ignore[attr-defined]
        utils.numpy = np_utils  # type: ignore[attr-defined]
        self.utils = utils

    def install(self, monkeypatch: Any) -> None:
        monkeypatch.setitem(sys.modules, "syphon", self)
        monkeypatch.setitem(sys.modules, "syphon.utils", self.utils)
        monkeypatch.setitem(sys.modules, "syphon.utils.raw", self.utils.raw)
        monkeypatch.setitem(sys.modules, "syphon.utils.numpy", self.utils.numpy)
