"""Video files and image folders through OpenCV: source (looping, pacing) and writer sink."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from bridge.io.base import FrameError, PixelFormat, SourceGone
from bridge.io.video import VideoSink, VideoSinkConfig, VideoSource, VideoSourceConfig

W, H, N = 64, 48, 12


def level_frame(i: int) -> np.ndarray:
    """BGR frame whose brightness encodes its index (survives lossy codecs)."""
    return np.full((H, W, 3), 20 + 18 * i, np.uint8)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "levels.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25.0, (W, H))
    assert writer.isOpened()
    for i in range(N):
        writer.write(level_frame(i))
    writer.release()
    return path


def read_levels(src: VideoSource, n: int) -> list[float]:
    out = []
    while len(out) < n:
        frame = src.read(1.0)
        if frame is not None:
            assert frame.fmt is PixelFormat.BGR and frame.data.shape == (H, W, 3)
            out.append(float(frame.data.mean()))
    return out


def test_video_file_plays_in_order_and_loops(clip: Path) -> None:
    src = VideoSource(VideoSourceConfig(path=str(clip), fps=240))
    src.open()
    levels = read_levels(src, N + 2)
    expected = [20 + 18 * i for i in range(N)] + [20, 38]
    assert np.allclose(levels, expected, atol=6), levels
    assert src.loops == 1
    src.close()


def test_video_file_fps_is_the_files_and_paces(clip: Path) -> None:
    src = VideoSource(VideoSourceConfig(path=str(clip)))
    src.open()
    assert src.nominal_fps == pytest.approx(25.0)
    t0 = time.monotonic()
    read_levels(src, 6)
    elapsed = time.monotonic() - t0
    assert 0.15 <= elapsed <= 2.0, elapsed  # 5 periods of 40 ms
    src.close()


def test_image_folder_natural_order_and_loop(tmp_path: Path) -> None:
    colours = {"f1.png": (255, 0, 0), "f2.png": (0, 255, 0), "f10.png": (0, 0, 255)}
    for name, bgr in colours.items():
        cv2.imwrite(str(tmp_path / name), np.full((10, 20, 3), bgr, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    src = VideoSource(VideoSourceConfig(path=str(tmp_path), fps=240))
    src.open()
    assert src.nominal_fps == 240
    seen = []
    while len(seen) < 4:
        frame = src.read(1.0)
        if frame is not None:
            assert frame.fmt is PixelFormat.BGR and frame.data.shape == (10, 20, 3)
            seen.append(tuple(int(v) for v in frame.data[0, 0]))
    # natural order f1, f2, f10 (broken.png skipped), then around again
    assert seen == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 0)]
    src.close()


def test_missing_or_empty_inputs_are_source_gone(tmp_path: Path) -> None:
    with pytest.raises(SourceGone, match="does not exist"):
        VideoSource(VideoSourceConfig(path=str(tmp_path / "nope.mp4"))).open()
    with pytest.raises(SourceGone, match="no images"):
        VideoSource(VideoSourceConfig(path=str(tmp_path))).open()
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"definitely not a video")
    with pytest.raises(SourceGone):
        src = VideoSource(VideoSourceConfig(path=str(bogus)))
        src.open()
        src.read(0.1)


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_video_sink_writes_a_readable_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    sink = VideoSink(VideoSinkConfig(path=str(path)))
    sink.open(W, H, 25.0)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 220  # red in RGB
    rgb[..., 2] = 30
    for _ in range(8):
        sink.send(rgb)
    with pytest.raises(FrameError, match="opened at"):
        sink.send(np.zeros((H + 2, W, 3), np.uint8))
    sink.close()
    sink.close()
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    assert len(frames) == 8
    assert frames[0].shape == (H, W, 3)
    b, g, r = (float(frames[3][..., c].mean()) for c in range(3))
    assert r > 180 and b < 70, (b, g, r)  # RGB was converted to OpenCV's BGR


def test_video_sink_read_back_by_video_source(tmp_path: Path) -> None:
    path = tmp_path / "round.mp4"
    sink = VideoSink(VideoSinkConfig(path=str(path)))
    sink.open(W, H, 30.0)
    for i in range(5):
        sink.send(np.full((H, W, 3), 30 + 40 * i, np.uint8))
    sink.close()
    src = VideoSource(VideoSourceConfig(path=str(path), fps=240))
    src.open()
    assert src.nominal_fps == 240
    levels = read_levels(src, 5)
    assert np.allclose(levels, [30 + 40 * i for i in range(5)], atol=6)
    src.close()


def test_video_sink_config_checks_the_extension() -> None:
    with pytest.raises(ValidationError, match="must end with"):
        VideoSinkConfig(path="out.gif")
    with pytest.raises(ValidationError):
        VideoSinkConfig(path="out.mp4", codec="toolong")
    assert VideoSinkConfig(path="OUT.MP4").path == "OUT.MP4"
