"""Real NDI over loopback, in this one process (ndi-python bundles the NDI runtime).

Within one process every sender is discoverable and receivers can connect by address; across
processes on one machine without mDNS discovery is unreliable (see docs/io-backends.md), so these
tests keep sender and receiver here. NDI is lossy: smooth images and tolerances.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from bridge.io import ndi as ndi_backend
from bridge.io.base import Frame, FrameError, PixelFormat, SourceGone
from bridge.io.ndi import NdiSink, NdiSinkConfig, NdiSource, NdiSourceConfig, discover, load_ndi
from bridge.io.registry import list_senders

pytest.importorskip("NDIlib", reason="ndi-python is not installed (pip install streambridge[ndi])")

W, H = 320, 240


def smooth_rgb(w: int = W, h: int = H, phase: int = 0) -> np.ndarray:
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    r = 40 + 170 * x + 0 * y
    g = 40 + 170 * y + 0 * x
    b = 120 + 80 * np.sin(2 * np.pi * (x + y) + phase / 10)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def to_rgb(frame: Frame) -> np.ndarray:
    code = {
        PixelFormat.BGRA: cv2.COLOR_BGRA2RGB,
        PixelFormat.RGBA: cv2.COLOR_RGBA2RGB,
        PixelFormat.UYVY: cv2.COLOR_YUV2RGB_UYVY,
    }[frame.fmt]
    return cv2.cvtColor(frame.data, code)


def pump(sink_send, source: NdiSource, limit_s: float = 5.0) -> Frame:
    """Send until the source returns a frame (the first captures are status events)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        sink_send()
        frame = source.read(0.1)
        if frame is not None:
            return frame
    raise AssertionError("no NDI frame arrived")


@pytest.fixture
def sink(unique_name: str):
    s = NdiSink(NdiSinkConfig(name=unique_name))
    s.open(W, H, 30.0)
    yield s
    s.close()


def test_sink_to_source_by_name_bgra(sink: NdiSink, unique_name: str) -> None:
    rgb = smooth_rgb()
    src = NdiSource(NdiSourceConfig(name=unique_name, color_format="bgra", discovery_timeout=10))
    src.open()
    try:
        assert unique_name in src.describe()
        frame = pump(lambda: sink.send(rgb), src)
        assert frame.fmt is PixelFormat.BGRA
        assert frame.data.shape == (H, W, 4) and frame.data.flags.c_contiguous
        err = np.abs(to_rgb(frame).astype(int) - rgb)
        assert err.max() <= 32 and err.mean() <= 5, (err.max(), err.mean())
        assert src.nominal_fps == pytest.approx(30.0)
        assert src.connections >= 1 and sink.connections >= 1
        # sequence numbers count frames
        second = pump(lambda: sink.send(rgb), src)
        assert second.seq == frame.seq + 1
    finally:
        src.close()


def test_uyvy_is_delivered_as_packed_uyvy(sink: NdiSink, unique_name: str) -> None:
    rgb = smooth_rgb(phase=3)
    src = NdiSource(NdiSourceConfig(name=unique_name, color_format="uyvy_bgra"))
    src.open()
    try:
        frame = pump(lambda: sink.send(rgb), src)
        # our sink flags frames opaque, so NDI hands over UYVY (H x W x 2)
        assert frame.fmt is PixelFormat.UYVY
        assert frame.data.shape == (H, W, 2)
        err = np.abs(to_rgb(frame).astype(int) - rgb)
        assert err.mean() <= 12, err.mean()  # colour-matrix differences on top of compression
    finally:
        src.close()


def test_source_from_raw_ndilib_sender_by_address(unique_name: str) -> None:
    lib = load_ndi()
    settings = lib.SendCreate()
    settings.ndi_name = unique_name
    settings.clock_video = False
    raw = lib.send_create(settings)
    assert raw is not None
    try:
        bgrx = cv2.cvtColor(smooth_rgb(160, 120), cv2.COLOR_RGB2BGRA)
        video = lib.VideoFrameV2()
        video.FourCC = lib.FOURCC_VIDEO_TYPE_BGRX
        video.data = bgrx
        senders = discover(5.0, until=lambda s: any(unique_name in x.name for x in s))
        (mine,) = [s for s in senders if s.name.endswith(f"({unique_name})")]
        # connect by address with no name: the name is not checked
        src = NdiSource(NdiSourceConfig(address=mine.address, color_format="bgra"))
        src.open()
        try:
            frame = pump(lambda: lib.send_send_video_v2(raw, video), src)
            assert frame.fmt is PixelFormat.BGRA and frame.data.shape == (120, 160, 4)
            err = np.abs(frame.data[..., :3].astype(int) - bgrx[..., :3])
            assert err.mean() <= 5
        finally:
            src.close()
    finally:
        lib.send_destroy(raw)


def test_discovery_via_list_senders(sink: NdiSink, unique_name: str) -> None:
    found = list_senders(1.5)
    assert isinstance(found["ndi"], list)
    assert any(name.endswith(f"({unique_name})") for name in found["ndi"]), found["ndi"]
    assert sink.describe().endswith(f"({unique_name})")


def test_missing_sender_retries_with_fresh_finders(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = load_ndi()
    created = []
    real_create = lib.find_create_v2

    def counting_create(settings):
        created.append(settings.extra_ips)
        return real_create(settings)

    monkeypatch.setattr(lib, "find_create_v2", counting_create)
    src = NdiSource(NdiSourceConfig(name="no such sender here", discovery_timeout=1.2))
    t0 = time.monotonic()
    with pytest.raises(SourceGone, match="not found"):
        src.open()
    assert time.monotonic() - t0 >= 1.0
    assert len(created) >= 2, "discovery must retry with a fresh finder"
    assert all("127.0.0.1" in ips for ips in created)
    src.close()


def test_library_error_frame_raises_source_gone(
    sink: NdiSink, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = NdiSource(NdiSourceConfig(name=unique_name))
    src.open()
    try:
        pump(lambda: sink.send(smooth_rgb()), src)
        lib = load_ndi()
        monkeypatch.setattr(
            lib, "recv_capture_v2", lambda *a, **k: (lib.FRAME_TYPE_ERROR, None, None, None)
        )
        with pytest.raises(SourceGone, match="lost"):
            src.read(0.1)
    finally:
        monkeypatch.undo()
        src.close()


def test_sender_going_away_is_a_stall_not_a_crash(unique_name: str) -> None:
    sink = NdiSink(NdiSinkConfig(name=unique_name))
    sink.open(64, 48, 30.0)
    src = NdiSource(NdiSourceConfig(name=unique_name))
    src.open()
    try:
        pump(lambda: sink.send(smooth_rgb(64, 48)), src)
        sink.close()
        # NDI keeps the receiver and reconnects by itself; the runtime's watchdog sees a stall
        assert src.read(0.3) is None
    finally:
        src.close()
        src.close()


def test_sink_follows_frame_size_and_rejects_garbage(sink: NdiSink, unique_name: str) -> None:
    src = NdiSource(NdiSourceConfig(name=unique_name, color_format="rgba"))
    src.open()
    try:
        frame = pump(lambda: sink.send(smooth_rgb(128, 64)), src)
        assert frame.fmt is PixelFormat.RGBA and frame.data.shape == (64, 128, 4)
    finally:
        src.close()
    with pytest.raises(FrameError):
        sink.send(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(FrameError):
        sink.send(np.zeros((0, 8, 3), np.uint8))


def test_runtime_is_initialised_once() -> None:
    first = load_ndi()
    assert load_ndi() is first
    assert ndi_backend._initialized is first
