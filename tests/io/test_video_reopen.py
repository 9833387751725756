"""A recording that has to be re-opened continues in a new numbered file; the first keeps its frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from bridge.io.video import VideoSink, VideoSinkConfig
from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import Metrics
from bridge.runtime.packet import FramePacket
from bridge.runtime.publisher import Publisher

W, H = 64, 48


def _count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def _record(sink: VideoSink, n: int, size: tuple[int, int] = (W, H)) -> None:
    sink.open(size[0], size[1], 30.0)
    for i in range(n):
        sink.send(np.full((size[1], size[0], 3), 20 * i, np.uint8))
    sink.close()


def test_reopen_writes_numbered_files_and_keeps_the_first(tmp_path: Path) -> None:
    cfg = VideoSinkConfig(path=str(tmp_path / "show.mp4"))
    sink = VideoSink(cfg)
    _record(sink, 6)
    _record(sink, 3)  # the same object re-opened (after a send error, say)
    assert sink.path == tmp_path / "show-001.mp4"
    (tmp_path / "show-002.mp4").write_bytes(b"someone else's file")
    again = VideoSink(cfg)  # a fresh object for the same path (the factory after a failed open)
    _record(again, 4)
    assert again.path == tmp_path / "show-003.mp4"  # an existing file is skipped, not truncated
    assert _count(tmp_path / "show.mp4") == 6
    assert _count(tmp_path / "show-001.mp4") == 3
    assert (tmp_path / "show-002.mp4").read_bytes() == b"someone else's file"
    assert _count(tmp_path / "show-003.mp4") == 4


def test_publisher_size_change_continues_in_a_new_file(tmp_path: Path) -> None:
    cfg = VideoSinkConfig(path=str(tmp_path / "rec.avi"))
    box: LatestMailbox[FramePacket] = LatestMailbox()
    pub = Publisher([lambda: VideoSink(cfg)], 30, box.take_latest, Metrics(), threaded_sinks=False)
    box.put(FramePacket(np.full((H, W, 3), 90, np.uint8), 0.0, 1))
    for _ in range(5):
        pub.publish_once()
    box.put(FramePacket(np.full((H * 2, W * 2, 3), 90, np.uint8), 0.0, 2))
    for _ in range(4):
        pub.publish_once()
    pub.stop()
    assert _count(tmp_path / "rec.avi") == 5
    assert _count(tmp_path / "rec-001.avi") == 4
