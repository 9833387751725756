"""Shared set-up for the frame-backend tests.

NDI reads ``NDI_CONFIG_DIR`` when the runtime initialises (once per process), so it is set here,
at collection time, before any test opens an NDI backend: a config that limits NDI to loopback
(``{"ndi": {"networks": {"ips": "127.0.0.1"}}}``) makes discovery work without mDNS. A value
already in the environment is respected. The NDI backends also always ask 127.0.0.1 directly,
so the tests pass even if something initialised NDI earlier without this config.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import uuid

import pytest

from tests.io.fakes.fake_pyvirtualcam import FakePyVirtualCam
from tests.io.fakes.fake_spoutgl import FakeSpoutGL, SpoutWorld
from tests.io.fakes.fake_syphon import FakeSyphon, SyphonWorld

if "NDI_CONFIG_DIR" not in os.environ:
    _ndi_dir = tempfile.mkdtemp(prefix="streambridge-ndi-")
    with open(os.path.join(_ndi_dir, "ndi-config.v1.json"), "w", encoding="utf-8") as fh:
        json.dump({"ndi": {"networks": {"ips": "127.0.0.1"}}}, fh)
    os.environ["NDI_CONFIG_DIR"] = _ndi_dir
    atexit.register(shutil.rmtree, _ndi_dir, True)


@pytest.fixture
def spout_world(monkeypatch: pytest.MonkeyPatch) -> SpoutWorld:
    world = SpoutWorld()
    FakeSpoutGL(world).install(monkeypatch)
    return world


@pytest.fixture
def syphon_world(monkeypatch: pytest.MonkeyPatch) -> SyphonWorld:
    world = SyphonWorld()
    FakeSyphon(world).install(monkeypatch)
    return world


@pytest.fixture
def fake_virtualcam(monkeypatch: pytest.MonkeyPatch) -> FakePyVirtualCam:
    module = FakePyVirtualCam()
    module.install(monkeypatch)
    return module


@pytest.fixture
def unique_name() -> str:
    """A sender name no other test (or process on this machine) uses."""
    return f"sbtest-{uuid.uuid4().hex[:10]}"
