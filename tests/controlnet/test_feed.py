"""The control-frame feed: pairing with the input frame, hold / fade on loss (driven state by
state here; tests/controlnet/test_control_source.py loses a real NDI sender), canny off the
render thread."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from bridge.config import DaemonConfig
from bridge.controlnet import ControlNetFeed, ControlPacket, canny_rgb, make_source_worker
from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.packet import FramePacket

W, H = 32, 24


class FakeWorker:
    """Stands in for a SourceWorker: the test sets its state and puts frames in its mailbox."""

    def __init__(self, mailbox: LatestMailbox[FramePacket]) -> None:
        self.mailbox = mailbox
        self.state = "connecting"
        self.detail = ""
        self.name = "fake"
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self, timeout: float = 0.0) -> bool:
        self.stopped = True
        return True

    def send(self, value: int, seq: int = 0) -> np.ndarray:
        rgb = np.full((H, W, 3), value, np.uint8)
        self.mailbox.put(FramePacket(rgb, 0.0, seq))
        return rgb


def configs(*entries: dict[str, Any]):
    return DaemonConfig.model_validate({"controlnets": list(entries)}).controlnets


def feed_with(*entries: dict[str, Any]) -> tuple[ControlNetFeed, list[FakeWorker]]:
    workers: list[FakeWorker] = []

    def make(index, cfg, mailbox, metrics, derive):
        w = FakeWorker(mailbox)
        workers.append(w)
        return w

    return ControlNetFeed(configs(*entries), (W, H), make_worker=make), workers


def packet(value: int, seq: int = 0) -> FramePacket:
    return FramePacket(np.full((H, W, 3), value, np.uint8), 0.0, seq)


def test_input_slots_give_none_and_second_sources_their_newest_frame() -> None:
    feed, (w,) = feed_with({"model": "a"}, {"model": "b", "source": "ndi:TD Depth"})
    assert feed.pair(packet(1))[0] is None
    w.state = "live"
    w.send(10)
    newest = w.send(20)  # two arrive between input frames: the newest wins
    first = feed.pair(packet(1))
    assert first[1] is newest
    # nothing new: the same control frame again (the render loop never waits for one)
    assert feed.pair(packet(2))[1] is newest
    third = w.send(30)
    control = feed.control_for([first, feed.pair(packet(3))])
    assert control[0] is None
    assert control[1].shape == (2, H, W, 3)
    assert control[1][0].max() == 20 and control[1][1].max() == 30 and third.max() == 30


def test_pairing_is_per_frame_inside_a_batch() -> None:
    """Each input frame gets the control frame current when it entered, not the batch's newest."""
    feed, (w,) = feed_with({"model": "b", "source": "ndi:x"})
    w.state = "live"
    pairs = []
    for k in range(3):
        w.send(50 + k)
        pairs.append(feed.pair(packet(k)))
    (stack,) = feed.control_for(pairs)
    assert [int(im.max()) for im in stack] == [50, 51, 52]


def test_before_the_first_control_frame_the_scale_factor_is_zero_and_the_slot_is_black() -> None:
    feed, (w,) = feed_with({"model": "b", "source": "ndi:x"})
    assert feed.gains(0.0) == [0.0]
    (image,) = feed.pair(packet(1))
    assert image.shape == (H, W, 3) and image.max() == 0
    w.state = "live"
    w.send(9)
    assert feed.gains(0.1) == [1.0]  # hold: no fade, full scale at once
    assert feed.status() == {"control/0/state": "live", "control/0/gain": 1.0, "control/0/holding": 0}


def test_hold_keeps_the_last_frame_and_the_scale_while_lost() -> None:
    feed, (w,) = feed_with({"model": "b", "source": "ndi:x", "on_loss": "hold"})
    w.state = "live"
    frame = w.send(77)
    feed.pair(packet(0))
    for state in ("stalled", "lost", "reconnecting"):
        w.state = state
        assert feed.gains() == [1.0]
        assert feed.pair(packet(1))[0] is frame
    assert feed.status()["control/0/holding"] == 1
    assert feed.details()[0]["holding"] is True
    w.state = "live"
    new = w.send(88)
    feed.gains()
    assert feed.pair(packet(2))[0] is new and feed.status()["control/0/holding"] == 0


def test_fade_ramps_the_scale_down_when_lost_and_back_up_when_live() -> None:
    feed, (w,) = feed_with({"model": "b", "source": "ndi:x", "on_loss": "fade", "fade_s": 2.0})
    w.state = "live"
    w.send(5)
    feed.pair(packet(0))
    assert feed.gains(0.0) == [0.0]  # first frame: fades in too
    assert feed.gains(1.0) == [pytest.approx(0.5)]
    assert feed.gains(3.0) == [1.0]
    w.state = "stalled"  # a short gap is not a loss
    assert feed.gains(3.5) == [1.0]
    w.state = "lost"
    assert feed.gains(4.0) == [pytest.approx(0.75)]
    w.state = "reconnecting"
    assert feed.gains(5.0) == [pytest.approx(0.25)]
    assert feed.gains(9.0) == [0.0]
    assert feed.status()["control/0/holding"] == 0
    w.state = "live"
    w.send(6)
    assert feed.gains(10.0) == [pytest.approx(0.5)]
    assert feed.gains(11.0) == [1.0]


def test_fade_time_zero_cuts() -> None:
    feed, (w,) = feed_with({"model": "b", "source": "ndi:x", "on_loss": "fade", "fade_s": 0})
    w.state = "live"
    w.send(5)
    assert feed.gains(0.0) == [1.0]
    w.state = "lost"
    assert feed.gains(0.01) == [0.0]


def test_canny_on_the_input_frame_is_attached_with_the_live_thresholds() -> None:
    feed, _ = feed_with({"model": "a", "preprocessor": "canny", "canny": {"low": 50, "high": 100}})
    assert feed.needs_input_hook
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, W // 2 :] = 200  # one vertical edge
    derived = feed.derive_input(FramePacket(rgb, 1.0, 7))
    assert isinstance(derived, ControlPacket) and tuple(derived)[1:] == (1.0, 7)
    edges = feed.pair(derived)[0]
    np.testing.assert_array_equal(edges, canny_rgb(rgb, 50, 100))
    assert edges.shape == (H, W, 3) and edges[:, W // 2 - 1 : W // 2 + 1].max() == 255 and edges[:, :4].max() == 0
    # thresholds above the edge's strength: the next frame has no edges
    feed.thresholds.set(0, low=900.0, high=1000.0)
    assert feed.pair(feed.derive_input(FramePacket(rgb, 2.0, 8)))[0].max() == 0
    with pytest.raises(ValueError, match="without its canny image"):
        feed.pair(FramePacket(rgb, 3.0, 9))  # a frame that skipped the worker's hook


def test_no_input_hook_without_canny_on_the_input() -> None:
    feed, _ = feed_with({"model": "a", "preprocessor": "depth", "depth_model": "d"},
                        {"model": "b", "preprocessor": "canny", "source": "ndi:x"})
    assert not feed.needs_input_hook


def test_canny_of_a_second_source_runs_on_its_worker_thread() -> None:
    """A real SourceWorker over the pattern backend: edges are made on the worker's thread
    (never the caller's, standing in for the render thread) with the thresholds set meanwhile."""
    seen: list[tuple[str, tuple[float, float]]] = []
    cfg = configs({"model": "b", "preprocessor": "canny", "source": "pattern:64x48@60",
                   "canny": {"low": 10, "high": 20}})

    def make(index, c, mailbox, metrics, derive):
        def spy(pk: FramePacket) -> FramePacket:
            seen.append((threading.current_thread().name, feed.thresholds.get(index)))
            return derive(pk)

        return make_source_worker(index, c, mailbox, metrics, spy, size=(W, H), resize="fill")

    feed = ControlNetFeed(cfg, (W, H), make_worker=make)
    feed.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not seen:
            time.sleep(0.01)
        feed.thresholds.set(0, low=900.0, high=1000.0)
        n = len(seen)
        while time.monotonic() < deadline and len(seen) < n + 3:
            time.sleep(0.01)
        assert feed.gains() == [1.0]
        (edges,) = feed.pair(packet(0))
    finally:
        assert feed.stop() == []
    assert seen and all(name.startswith("source-control0:pattern") for name, _ in seen), seen[:3]
    assert threading.current_thread().name not in {name for name, _ in seen}
    assert seen[-1][1] == (900.0, 1000.0)
    assert edges.shape == (H, W, 3) and set(np.unique(edges)) <= {0, 255}
