"""Real NDI over loopback: a test sender -> daemon (ndi source, tiny model) -> ndi sink -> a test
receiver; then the sender vanishes for 3 s and comes back."""

from __future__ import annotations

import threading
import time
import uuid

import cv2
import numpy as np
import pytest

from bridge.config import DaemonConfig
from bridge.daemon import Daemon, DaemonOptions
from bridge.io.ndi import discover, load_ndi
from tests.daemon.conftest import daemon_config, wait_until

OUT_FPS = 20.0


def gradient(w: int, h: int, phase: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 255 // w + phase) % 256, yy * 255 // h, np.full_like(xx, 128)], -1)
    return cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2BGRA)


class RawSender:
    """A raw NDIlib sender at 30 fps on its own thread (not our NdiSink)."""

    def __init__(self, name: str) -> None:
        self.lib = load_ndi()
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        settings = self.lib.SendCreate()
        settings.ndi_name = self.name
        settings.clock_video = False
        self.raw = self.lib.send_create(settings)
        assert self.raw is not None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            frame = self.lib.VideoFrameV2()
            frame.FourCC = self.lib.FOURCC_VIDEO_TYPE_BGRX
            frame.data = gradient(96, 64, k * 4)
            frame.frame_rate_N, frame.frame_rate_D = 30000, 1000
            self.lib.send_send_video_v2(self.raw, frame)
            k += 1
            time.sleep(1 / 30)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self.raw is not None:
            self.lib.send_destroy(self.raw)
            self.raw = None


class RawReceiver:
    """A raw NDIlib receiver on the daemon's output; records when each video frame arrives."""

    def __init__(self, address: str) -> None:
        self.lib = lib = load_ndi()
        create = lib.RecvCreateV3()
        create.color_format = lib.RECV_COLOR_FORMAT_BGRX_BGRA
        self.recv = lib.recv_create_v3(create)
        src = lib.Source()
        src.url_address = address
        lib.recv_connect(self.recv, src)
        self.times: list[float] = []
        self.last: np.ndarray | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lib = self.lib
        while not self._stop.is_set():
            t, video, _, _ = lib.recv_capture_v2(self.recv, 50)
            if t == lib.FRAME_TYPE_VIDEO:
                self.times.append(time.monotonic())
                self.last = np.copy(video.data)
                lib.recv_free_video_v2(self.recv, video)

    def gaps_between(self, t0: float, t1: float) -> float:
        ts = [t for t in self.times if t0 <= t <= t1]
        return max((b - a for a, b in zip(ts, ts[1:], strict=False)), default=float("inf"))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.lib.recv_destroy(self.recv)


@pytest.fixture
def names():
    tag = uuid.uuid4().hex[:8]
    return f"sbin-{tag}", f"sbout-{tag}"


def test_ndi_through_daemon_and_sender_loss(tiny_model_dir, preset_dir, feedback, names):
    in_name, out_name = names
    sender = RawSender(in_name)
    sender.start()
    base = daemon_config(tiny_model_dir, preset_dir, feedback.port).model_dump()
    base["source"] = {"type": "ndi", "name": in_name, "discovery_timeout": 2.0}
    base["sinks"] = [{"type": "ndi", "name": out_name}]
    base["output"]["fps"] = OUT_FPS
    base["output"]["no_signal"] = "slate"
    cfg = DaemonConfig.model_validate(base)
    d = Daemon(cfg, DaemonOptions(prewarm_timeout=0))
    d.start()
    receiver = None
    try:
        assert wait_until(lambda: d.source_worker.state == "live", 10), d.source_worker.detail
        assert wait_until(lambda: d.frames_rendered > 5, 10)
        outs = discover(5.0, until=lambda s: any(x.name.endswith(f"({out_name})") for x in s))
        (mine,) = [s for s in outs if s.name.endswith(f"({out_name})")]
        receiver = RawReceiver(mine.address)
        assert wait_until(lambda: len(receiver.times) > 10, 10), "the test receiver gets no frames"
        assert receiver.last.shape[:2] == (64, 64)  # pipeline size

        # the sender vanishes for 3 s
        rendered_before = d.frames_rendered
        t_kill = time.monotonic()
        sender.stop()
        assert wait_until(lambda: d.source_worker.state in ("lost", "reconnecting"), 1.0), d.source_worker.state
        t_lost = time.monotonic()
        time.sleep(max(0.0, 3.0 - (t_lost - t_kill)))
        t_back = time.monotonic()
        # the output never went quiet while the source was gone
        gap = receiver.gaps_between(t_kill, t_back)
        assert gap <= 2.0 / OUT_FPS + 0.03, f"longest output gap {gap * 1000:.0f} ms during the outage"
        assert d.publisher.showing == "slate"

        resets_before = d.render.resets
        sender = RawSender(in_name)
        sender.start()
        assert wait_until(lambda: d.source_worker.state == "live", 1.0), (
            f"not live 1 s after the sender returned: {d.source_worker.state} ({d.source_worker.detail})")
        assert wait_until(lambda: d.frames_rendered > rendered_before + 3, 2.0)
        assert d.render.resets > resets_before  # a clean stream after the gap
        n_before = len(receiver.times)
        assert wait_until(lambda: len(receiver.times) > n_before + 5, 2.0)
    finally:
        if receiver is not None:
            receiver.stop()
        d.stop()
        sender.stop()
