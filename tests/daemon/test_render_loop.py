"""The render loop on a real tiny pipeline, driven step by step (no threads): a clean stream after
a gap, and what a non-finite output or an exception does."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from bridge.render_loop import RENDER_ADDRESS, RenderLoop
from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import Metrics
from bridge.runtime.packet import FramePacket
from tests.daemon.faults import FaultRunner

SIZE = 64


class Controller:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {"bypass": False, "mix": 1.0}
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1


def _engine(tiny_components, smoothing: float = 0.0):
    from stream_core.engine import StreamEngine
    from stream_core.pipeline import StreamSettings

    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(20, 32, 45), seed=3, smoothing=smoothing)
    engine = StreamEngine(tiny_components, s, "a neon city", "")
    engine.pipeline.runner = FaultRunner(engine.runner)
    return engine


class Rig:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.ctrl = Controller()
        self.inp: LatestMailbox[FramePacket] = LatestMailbox(1)
        self.out: LatestMailbox[FramePacket] = LatestMailbox(8)
        self.errors: list[tuple[str, str]] = []
        self.progress = 0
        self.loop = RenderLoop(engine, self.ctrl, self.inp, self.out, Metrics(),
                               bypass=lambda: bool(self.ctrl.values["bypass"]),
                               on_progress=self._progressed, on_error=lambda a, r: self.errors.append((a, r)))

    def _progressed(self) -> None:
        self.progress += 1

    def feed(self, value: int, n: int = 1) -> list[np.ndarray]:
        outs = []
        for k in range(n):
            self.inp.put(FramePacket(_frame(value), 0.0, k))
            self.loop.step(timeout=0)
            while (p := self.out.get(0)) is not None:
                outs.append(p.rgb)
        return outs


def _frame(value: int) -> np.ndarray:
    img = np.full((SIZE, SIZE, 3), value, np.uint8)
    img[: SIZE // 2] //= 2  # not flat: something for the encoder to see
    return img


@pytest.mark.parametrize("smoothing", [0.0, 0.6])
def test_after_the_source_comes_back_no_frame_depends_on_a_pre_gap_latent(tiny_components, smoothing):
    fresh = Rig(_engine(tiny_components, smoothing))
    want = fresh.feed(200, 4)

    gap = Rig(_engine(tiny_components, smoothing))
    gap.feed(30, 4)  # before the gap: a different picture fills the stream buffer (and smoothing)
    gap.loop.request_reset("source live again after lost")  # what the source callback does
    got = gap.feed(200, 4)
    assert len(got) == len(want) == 4
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)  # bit for bit the freshly reset pipeline's output

    # without the reset the first frames after the gap carry the old picture: the check can fail
    stale = Rig(_engine(tiny_components, smoothing))
    stale.feed(30, 4)
    assert not np.array_equal(stale.feed(200, 1)[0], want[0])


def test_after_bypass_ends_the_stream_starts_clean(tiny_components):
    fresh = Rig(_engine(tiny_components))
    want = fresh.feed(200, 3)
    rig = Rig(_engine(tiny_components))
    rig.feed(30, 3)
    rig.ctrl.values["bypass"] = True
    calls = rig.engine.pipeline.runner.calls
    assert rig.feed(200, 3) == []  # in bypass the model is left alone (the publisher shows input)
    assert rig.engine.pipeline.runner.calls == calls and rig.progress >= 3 + 3
    rig.ctrl.values["bypass"] = False
    got = rig.feed(200, 3)
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)) and len(got) == 3


def test_non_finite_output_is_held_back_reset_and_reported(tiny_components, caplog):
    rig = Rig(_engine(tiny_components))
    good = rig.feed(120, 3)
    assert len(good) == 3 and rig.engine.output_finite
    runner = rig.engine.pipeline.runner
    runner.mode = "nan"
    with caplog.at_level(logging.WARNING, logger="streambridge.render"):
        assert rig.feed(120, 20) == []  # NaN never reaches the output mailbox
    assert rig.loop.nonfinite_outputs == 20 and rig.out.counters()["put"] == 3
    assert rig.loop.resets == 20  # the stream is reset each time
    warnings = [r for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1  # throttled
    assert len(rig.errors) == 1 and rig.errors[0][0] == RENDER_ADDRESS and "non-finite" in rig.errors[0][1]
    runner.mode = "ok"
    assert len(rig.feed(120, 2)) == 2  # and frames flow again


def test_an_exception_resets_the_stream_and_is_reported_once(tiny_components, caplog):
    rig = Rig(_engine(tiny_components))
    rig.feed(120, 2)
    rig.engine.pipeline.runner.mode = "raise"
    with caplog.at_level(logging.ERROR, logger="streambridge.render"):
        assert rig.feed(120, 10) == []
    assert rig.loop.render_errors == 10 and rig.loop.resets == 10
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    assert len(rig.errors) == 1 and "injected device error" in rig.errors[0][1]
    rig.engine.pipeline.runner.mode = "ok"
    assert len(rig.feed(120, 2)) == 2


def _overlapped(rig: Rig) -> Rig:
    rig.loop.overlap = True  # as on CUDA: queue the next frame before waiting for this one's download
    return rig


def test_overlap_hands_on_the_same_frames_one_call_later(tiny_components):
    want = Rig(_engine(tiny_components)).feed(200, 5)
    rig = _overlapped(Rig(_engine(tiny_components)))
    got = []
    for k in range(6):
        out = rig.feed(200, 1)
        if k == 0:
            assert out == []  # its download is still "in flight": nothing to hand on yet
        got += out
    assert len(got) == 5
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_overlap_drops_the_frame_in_flight_on_a_non_finite_output(tiny_components):
    rig = _overlapped(Rig(_engine(tiny_components)))
    rig.feed(120, 3)
    runner = rig.engine.pipeline.runner
    runner.mode = "nan"
    handed = rig.feed(120, 1)  # queues a NaN frame, hands on the previous (good) one
    assert len(handed) == 1 and rig.loop.nonfinite_outputs == 0
    runner.mode = "ok"
    assert rig.feed(120, 1) == []  # the NaN frame's download lands: held back, stream reset
    assert rig.loop.nonfinite_outputs == 1 and rig.loop.resets >= 1
    assert rig.loop._deferred is None  # the frame queued meanwhile was built on the bad state: dropped
    outs = rig.feed(120, 3)
    assert len(outs) == 2  # the stream restarts (one call to fill the overlap)


def test_overlap_is_on_by_default_only_for_an_engine_on_cuda():
    import types

    class Eng:
        settings = types.SimpleNamespace(frame_buffer_size=1)
        pipeline = types.SimpleNamespace(latency_frames=1)

        def __init__(self, device: str) -> None:
            self.runner = types.SimpleNamespace(device=types.SimpleNamespace(type=device))

        def process(self, frames, mix=None): ...

        def process_async(self, frames, mix=None): ...

    def loop(device: str) -> RenderLoop:
        return RenderLoop(Eng(device), Controller(), LatestMailbox(1), LatestMailbox(1), Metrics())

    assert loop("cuda").overlap is True
    assert loop("cpu").overlap is False
    assert loop("mps").overlap is False
