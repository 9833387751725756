"""Garbage frames must not crash a backend.

Who rejects what:

* Sources never return an array whose shape disagrees with its ``PixelFormat``: each backend
  checks what the library handed over (NDI: ``copy_plane`` / FourCC table; Spout: the sender size
  before allocating; Syphon: texture format and image shape; camera/video: OpenCV's result) and
  drops the frame (counted, logged once) instead of returning it.
* The runtime validates every frame again before converting it
  (``bridge.runtime.convert.validate_frame`` raises :class:`FrameError`: counted and dropped), so
  a bug in one backend cannot reach the model. :func:`bridge.runtime.convert.validate_frame` holds the same
  shape rules for backends and these tests.
* Sinks check their input with the same rules (uint8 H x W x 3) and raise :class:`FrameError`.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bridge.io.base import Frame, FrameError, PixelFormat
from bridge.io.ndi import NdiSource, NdiSourceConfig, copy_plane
from bridge.io.null import NullSink
from bridge.io.spout import SpoutSink, SpoutSource, SpoutSourceConfig
from bridge.runtime.convert import validate_frame as check_frame
from tests.io.fakes.fake_spoutgl import SpoutWorld
from tests.io.fakes.fake_syphon import SyphonWorld


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (np.zeros((0, 0, 3), np.uint8), PixelFormat.RGB),
        (np.zeros((4, 0, 4), np.uint8), PixelFormat.BGRA),
        (np.zeros((4, 4, 3), np.float32), PixelFormat.RGB),
        (np.zeros((4, 4, 3), np.uint16), PixelFormat.BGR),
        (np.zeros((4, 4), np.uint8), PixelFormat.RGB),
        (np.zeros((4, 4, 3), np.uint8), PixelFormat.RGBA),
        (np.zeros((4, 4, 4), np.uint8), PixelFormat.UYVY),
        (np.zeros((4, 5, 2), np.uint8), PixelFormat.UYVY),
        ([[0, 0, 0]], PixelFormat.RGB),
    ],
)
def test_check_frame_rejects(data: object, fmt: PixelFormat) -> None:
    with pytest.raises(FrameError):
        check_frame(Frame(data=data, fmt=fmt))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shape", "fmt"),
    [
        ((2, 2, 3), PixelFormat.RGB),
        ((2, 2, 3), PixelFormat.BGR),
        ((2, 2, 4), PixelFormat.RGBA),
        ((2, 2, 4), PixelFormat.BGRA),
        ((2, 4, 2), PixelFormat.UYVY),
    ],
)
def test_check_frame_accepts(shape: tuple[int, ...], fmt: PixelFormat) -> None:
    check_frame(Frame(data=np.zeros(shape, np.uint8), fmt=fmt))


def test_ndi_copy_plane_handles_stride_and_garbage() -> None:
    # 3 rows of 2 BGRA pixels, rows padded to 12 bytes, as NDI may deliver
    raw = np.arange(36, dtype=np.uint8)
    view = np.lib.stride_tricks.as_strided(raw, shape=(3, 2, 6), strides=(12, 6, 1))
    out = copy_plane(view, width=2, height=3, stride=12, bpp=4)
    assert out is not None and out.shape == (3, 2, 4) and out.flags.c_contiguous
    np.testing.assert_array_equal(out[1, 0], [12, 13, 14, 15])
    np.testing.assert_array_equal(out[2, 1], [28, 29, 30, 31])
    assert copy_plane(raw.reshape(3, 12, 1), 0, 0, 0, 4) is None  # 0x0
    assert copy_plane(raw.reshape(3, 12, 1), 4, 3, 8, 4) is None  # stride < width * bpp
    assert copy_plane(raw.reshape(3, 12, 1), 3, 3, 12, 2) is None  # odd UYVY width
    assert copy_plane(raw.reshape(3, 12, 1), 3, 4, 12, 4) is None  # buffer too short
    assert copy_plane(raw.astype(np.float32).reshape(3, 12, 1), 3, 3, 12, 4) is None


def test_ndi_source_drops_garbage_video_frames() -> None:
    src = NdiSource(NdiSourceConfig(name="x"))
    src._fourccs = {1: (PixelFormat.BGRA, 4)}  # as filled from NDIlib in open()
    empty = SimpleNamespace(
        FourCC=1, xres=0, yres=0, line_stride_in_bytes=0, data=None, frame_rate_N=30, frame_rate_D=1
    )
    unknown = SimpleNamespace(
        FourCC=99,
        xres=2,
        yres=2,
        line_stride_in_bytes=8,
        data=np.zeros((2, 2, 4), np.uint8),
        frame_rate_N=30,
        frame_rate_D=1,
    )
    short = SimpleNamespace(
        FourCC=1,
        xres=64,
        yres=64,
        line_stride_in_bytes=256,
        data=np.zeros((2, 2, 4), np.uint8),
        frame_rate_N=30,
        frame_rate_D=1,
    )
    assert src._to_frame(empty, 0.0) is None
    assert src._to_frame(unknown, 0.0) is None
    assert src._to_frame(short, 0.0) is None
    assert src.frames_dropped == 3
    good = SimpleNamespace(
        FourCC=1,
        xres=2,
        yres=2,
        line_stride_in_bytes=8,
        data=np.ones((2, 2, 4), np.uint8),
        frame_rate_N=60000,
        frame_rate_D=1001,
    )
    frame = src._to_frame(good, 1.0)
    assert frame is not None
    check_frame(frame)
    assert src.nominal_fps == pytest.approx(59.94, abs=0.01)


def test_spout_zero_size_sender_yields_no_frame(spout_world: SpoutWorld) -> None:
    spout_world.publish("broken", np.zeros((0, 0, 4), np.uint8))
    src = SpoutSource(SpoutSourceConfig(name="broken"))
    src.open()
    assert src.read(0.05) is None
    spout_world.publish("broken", np.full((2, 2, 4), 9, np.uint8))  # recovers when it resizes
    frame = src.read(0.2)
    assert frame is not None
    check_frame(frame)
    src.close()


def test_syphon_bad_texture_is_dropped(syphon_world: SyphonWorld) -> None:
    from bridge.io.syphon import SyphonSource, SyphonSourceConfig

    syphon_world.publish("Out", "App", np.zeros((0, 0, 4), np.uint8))
    src = SyphonSource(SyphonSourceConfig(name="Out"))
    src.open()
    assert src.read(0.03) is None
    assert src.frames_dropped >= 1
    src.close()


def test_sinks_reject_garbage(spout_world: SpoutWorld) -> None:
    sinks = [NullSink(), SpoutSink()]
    for sink in sinks:
        sink.open(4, 4, 30.0)
        for bad in (
            np.zeros((4, 4, 3), np.float32),
            np.zeros((4, 4, 4), np.uint8),
            np.zeros((0, 4, 3), np.uint8),
        ):
            with pytest.raises(FrameError):
                sink.send(bad)
        sink.send(np.zeros((4, 4, 3), np.uint8))
        sink.close()
    assert sinks[0].frames == 1 and sinks[1].frames_sent == 1
