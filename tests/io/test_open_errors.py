"""A source that cannot be opened says why: in the error it raises (with FFmpeg's own words, which
no longer go around the logger to the process's stderr), and once per change of reason."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from bridge.io.base import Frame, FrameSource, PixelFormat, SourceGone
from bridge.io.native_log import capture_native_stderr, clean_line
from bridge.io.reporting import OpenErrorReport, ReportingSource
from bridge.io.video import VideoSource, VideoSourceConfig


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    ok = d / "ok.mp4"
    w = cv2.VideoWriter(str(ok), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    rng = np.random.default_rng(0)
    w.write(np.zeros((48, 64, 3), np.uint8))
    for _ in range(29):  # noise: a file big enough for FFmpeg to look for (and miss) its index
        w.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    w.release()
    data = ok.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    corrupt = d / "corrupt"
    corrupt.mkdir()
    for i in range(3):
        (corrupt / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    mixed = d / "mixed"
    mixed.mkdir()
    (mixed / "0.png").write_bytes(b"not an image")
    cv2.imwrite(str(mixed / "1.png"), np.full((8, 8, 3), 77, np.uint8))
    return d


def test_truncated_video_says_why_and_ffmpeg_goes_through_python(clips, capfd):
    src = VideoSource(VideoSourceConfig(path=str(clips / "truncated.mp4")))
    with pytest.raises(SourceGone) as exc:
        src.open()
    assert "truncated.mp4" in str(exc.value) and "moov atom not found" in str(exc.value)
    assert "0x" not in str(exc.value)  # no per-run pointer: the same reason on every retry
    assert "moov atom" not in capfd.readouterr().err  # not written around the logger


def test_folder_of_corrupt_images_says_why(clips):
    with pytest.raises(SourceGone, match="none of the 3 images .* can be decoded"):
        VideoSource(VideoSourceConfig(path=str(clips / "corrupt"))).open()


def test_folder_plays_from_the_first_good_image(clips):
    src = VideoSource(VideoSourceConfig(path=str(clips / "mixed"), fps=100))
    src.open()
    frame = src.read(0.5)
    assert frame is not None and int(frame.data[0, 0, 0]) == 77
    src.close()


def test_good_video_opens_and_delivers_its_first_frame(clips):
    src = VideoSource(VideoSourceConfig(path=str(clips / "ok.mp4"), fps=100))
    src.open()
    first = src.read(0.5)
    assert first is not None and first.data.shape == (48, 64, 3) and int(first.data.mean()) < 5
    src.close()


def test_capture_native_stderr_catches_fd2_and_cleans_lines():
    import os

    got: list[str] = []
    with capture_native_stderr(got):
        os.write(2, b"[mov,mp4,m4a @ 0x55d0c0ffee00] moov atom not found\n\n")
        os.write(2, b"[ WARN:0@0.012] global cap.cpp:123 open VIDEOIO: oops\n")
    assert got == ["FFmpeg (mov): moov atom not found", "OpenCV warn: cap.cpp:123 open VIDEOIO: oops"]
    assert clean_line("plain") == "plain"


class Flaky(FrameSource):
    kind = "flaky"
    fail = "sender X not found"

    def open(self) -> None:
        if self.fail:
            raise SourceGone(self.fail)

    def read(self, timeout: float) -> Frame | None:
        return Frame(np.zeros((2, 2, 3), np.uint8), PixelFormat.RGB)

    def close(self) -> None:
        pass


def test_reason_is_reported_once_per_change(caplog):
    changes: list[str] = []
    report = OpenErrorReport("ndi", on_change=changes.append)
    make = ReportingSource.factory(Flaky, report)
    caplog.set_level(logging.INFO, "streambridge.source")
    for _ in range(5):  # five retries, one reason
        with pytest.raises(SourceGone):
            make().open()
    assert report.reason == "sender X not found" and changes == ["sender X not found"]
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    Flaky.fail = "another reason"
    with pytest.raises(SourceGone):
        make().open()
    Flaky.fail = ""
    src = make()
    src.open()
    assert src.read(0.1) is not None
    assert changes == ["sender X not found", "another reason", ""] and report.reason == ""
    report.close()  # a stop: failures caused by it are not reported
    Flaky.fail = "interrupted"
    with pytest.raises(SourceGone):
        make().open()
    assert report.reason == ""
    Flaky.fail = "sender X not found"
