"""The render loop hands each stream call the control frames paired with its input frames when
they entered the stream, and the feed's loss factors to the controller every iteration."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from bridge.config import DaemonConfig
from bridge.controlnet import ControlNetFeed
from bridge.render_loop import RenderLoop
from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import Metrics
from bridge.runtime.packet import FramePacket
from tests.controlnet.test_feed import FakeWorker, H, W


class Engine:
    def __init__(self, f: int) -> None:
        self.settings = SimpleNamespace(frame_buffer_size=f)
        self.pipeline = SimpleNamespace(reset=self._reset, last_skipped=False, latency_frames=1)
        self.output_finite = True
        self.calls: list[tuple[np.ndarray, Any]] = []
        self.resets = 0

    def _reset(self) -> None:
        self.resets += 1

    def process(self, rgb: np.ndarray, mix: float | None = None, control: Any = None) -> np.ndarray:
        self.calls.append((rgb, control))
        return rgb


class Controller:
    def __init__(self) -> None:
        self.values = {"bypass": False, "mix": 1.0}
        self.gains: list[list[float]] = []

    def tick(self) -> None:
        pass

    def set_controlnet_gains(self, gains: list[float]) -> None:
        self.gains.append(list(gains))


def rig(f: int, *entries: dict[str, Any]):
    workers: list[FakeWorker] = []

    def make(index, cfg, mailbox, metrics, derive):
        workers.append(FakeWorker(mailbox))
        return workers[-1]

    cfgs = DaemonConfig.model_validate({"controlnets": list(entries)}).controlnets
    feed = ControlNetFeed(cfgs, (W, H), make_worker=make)
    engine, ctl = Engine(f), Controller()
    inp: LatestMailbox[FramePacket] = LatestMailbox(1)
    errors: list[tuple[str, str]] = []
    loop = RenderLoop(engine, ctl, inp, LatestMailbox(8), Metrics(), bypass=lambda: False,
                      on_error=lambda a, r: errors.append((a, r)), overlap=False, controlnets=feed)
    return loop, feed, workers, engine, ctl, inp, errors


def test_each_frame_of_a_batch_gets_the_control_frame_current_when_it_entered() -> None:
    loop, feed, (w,), engine, ctl, inp, errors = rig(2, {"model": "a"}, {"model": "b", "source": "ndi:x"})
    w.state = "live"
    for k, value in enumerate((10, 20, 30, 40)):
        w.send(value)
        inp.put(FramePacket(np.full((H, W, 3), k, np.uint8), 0.0, k))
        loop.step(timeout=0)
    assert errors == [] and len(engine.calls) == 2
    for (_rgb, control), expected in zip(engine.calls, ((10, 20), (30, 40)), strict=True):
        assert control[0] is None  # source: input -> the engine uses the input frames
        assert control[1].shape == (2, H, W, 3)
        assert [int(im.max()) for im in control[1]] == list(expected)
    assert ctl.gains[-1] == [1.0, 1.0]


def test_a_control_source_that_sends_nothing_never_holds_up_the_output() -> None:
    loop, feed, (w,), engine, ctl, inp, errors = rig(1, {"model": "b", "source": "ndi:x"})
    for k in range(3):
        inp.put(FramePacket(np.full((H, W, 3), k, np.uint8), 0.0, k))
        loop.step(timeout=0)
    assert len(engine.calls) == 3 and errors == []
    assert all(c[1][0].max() == 0 for c in engine.calls)  # black filler ...
    assert ctl.gains[-1] == [0.0]  # ... at scale factor 0: no ControlNet call in the core


def test_without_controlnets_the_engine_is_called_as_before() -> None:
    engine, ctl = Engine(1), Controller()
    inp: LatestMailbox[FramePacket] = LatestMailbox(1)
    empty = ControlNetFeed([], (W, H))
    loop = RenderLoop(engine, ctl, inp, LatestMailbox(8), Metrics(), bypass=lambda: False, overlap=False,
                      controlnets=empty)
    inp.put(FramePacket(np.zeros((H, W, 3), np.uint8), 0.0, 0))
    loop.step(timeout=0)
    assert engine.calls[0][1] is None and ctl.gains == []


def test_a_frame_that_cannot_be_paired_is_a_reported_render_error() -> None:
    loop, feed, _, engine, ctl, inp, errors = rig(1, {"model": "a", "preprocessor": "canny"})
    inp.put(FramePacket(np.zeros((H, W, 3), np.uint8), 0.0, 0))  # no edge image attached
    loop.step(timeout=0)
    assert engine.calls == [] and loop.render_errors == 1 and engine.resets == 1
    assert errors and "canny image" in errors[0][1]
    inp.put(feed.derive_input(FramePacket(np.zeros((H, W, 3), np.uint8), 0.0, 1)))
    loop.step(timeout=0)
    assert len(engine.calls) == 1 and engine.calls[0][1][0].shape == (1, H, W, 3)
