"""Camera source (OpenCV VideoCapture, faked: no camera on CI) and virtual camera sink (faked
pyvirtualcam: the v4l2loopback module cannot load on CI machines)."""

from __future__ import annotations

import sys
from typing import Any

import cv2
import numpy as np
import pytest

from bridge.io.base import BackendUnavailable, FrameError, PixelFormat, SourceGone
from bridge.io.camera import CameraSource, CameraSourceConfig
from bridge.io.virtualcam import VirtualCamSink, VirtualCamSinkConfig
from tests.io.fakes.fake_pyvirtualcam import FakePyVirtualCam


class FakeCapture:
    """Just enough of cv2.VideoCapture: a scripted list of read() results."""

    script: list[Any] = []
    opened = True
    instances: list[FakeCapture] = []

    def __init__(self, index: int, api: int = 0) -> None:
        self.index, self.api = index, api
        self.props: dict[int, float] = {cv2.CAP_PROP_FPS: 30.0}
        self.released = False
        self._script = list(type(self).script)
        FakeCapture.instances.append(self)

    def isOpened(self) -> bool:
        return type(self).opened

    def set(self, prop: int, value: float) -> bool:
        self.props[prop] = value
        return True

    def get(self, prop: int) -> float:
        return self.props.get(prop, 0.0)

    def read(self) -> tuple[bool, Any]:
        if not self._script:
            return False, None
        return True, self._script.pop(0)

    def release(self) -> None:
        self.released = True


@pytest.fixture
def fake_capture(monkeypatch: pytest.MonkeyPatch) -> type[FakeCapture]:
    FakeCapture.script = []
    FakeCapture.opened = True
    FakeCapture.instances = []
    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture)
    return FakeCapture


def test_camera_delivers_bgr_and_applies_settings(fake_capture: type[FakeCapture]) -> None:
    bgr = np.full((4, 6, 3), 7, np.uint8)
    gray = np.full((4, 6), 9, np.uint8)
    fake_capture.script = [bgr, gray]
    src = CameraSource(CameraSourceConfig(index=2, width=640, height=480, fps=60, fourcc="MJPG"))
    src.open()
    cap = fake_capture.instances[0]
    assert cap.index == 2
    assert cap.props[cv2.CAP_PROP_FRAME_WIDTH] == 640 and cap.props[cv2.CAP_PROP_FPS] == 60
    assert cap.props[cv2.CAP_PROP_FOURCC] == cv2.VideoWriter.fourcc(*"MJPG")
    f1, f2 = src.read(1.0), src.read(1.0)
    assert f1 is not None and f1.fmt is PixelFormat.BGR and f1.data.shape == (4, 6, 3)
    assert (
        f2 is not None and f2.fmt is PixelFormat.BGR and f2.data.shape == (4, 6, 3)
    )  # gray -> BGR
    assert (f1.seq, f2.seq) == (0, 1)
    assert src.nominal_fps == 60
    with pytest.raises(SourceGone, match="stopped delivering"):
        src.read(1.0)
    src.close()
    assert cap.released


def test_camera_that_cannot_open_is_source_gone(fake_capture: type[FakeCapture]) -> None:
    fake_capture.opened = False
    with pytest.raises(SourceGone, match="camera 5 could not be opened"):
        CameraSource(CameraSourceConfig(index=5)).open()
    assert fake_capture.instances[0].released


def test_camera_garbage_frame_is_dropped(fake_capture: type[FakeCapture]) -> None:
    fake_capture.script = [np.zeros((4, 6, 3), np.float32), np.zeros((4, 6, 5), np.uint8)]
    src = CameraSource()
    src.open()
    assert src.read(1.0) is None
    assert src.read(1.0) is None
    src.close()


def test_virtualcam_sends_rgb(fake_virtualcam: FakePyVirtualCam) -> None:
    sink = VirtualCamSink(VirtualCamSinkConfig(device="/dev/video42"))
    sink.open(32, 16, 30.0)
    (cam,) = fake_virtualcam.cameras
    assert (cam.width, cam.height, cam.fps, cam.fmt) == (
        32,
        16,
        30.0,
        fake_virtualcam.PixelFormat.RGB,
    )
    assert cam.device == "/dev/video42" and cam.backend == "v4l2loopback"
    rgb = np.random.default_rng(0).integers(0, 256, (16, 32, 3), dtype=np.uint8)
    sink.send(rgb)
    np.testing.assert_array_equal(cam.frames[0], rgb)
    with pytest.raises(FrameError, match="opened at 32x16"):
        sink.send(np.zeros((8, 8, 3), np.uint8))
    assert sink.describe() == "virtualcam:/dev/video42"
    sink.close()
    assert cam.closed


def test_virtualcam_without_a_device_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    FakePyVirtualCam(device_available=False).install(monkeypatch)
    with pytest.raises(BackendUnavailable, match="v4l2loopback"):
        VirtualCamSink().open(32, 16, 30.0)


def test_virtualcam_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)
    with pytest.raises(BackendUnavailable, match=r'pip install "streambridge\[virtualcam\]"'):
        VirtualCamSink().open(32, 16, 30.0)
