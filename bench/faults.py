"""Fault figures of the runtime on real threads, with an identity "model" that can be made to hang.

    synthetic 60 fps source -> SourceWorker -> mailbox -> identity render thread -> mailbox
        -> Publisher (60 Hz, render watchdog 500 ms, on_stall input) -> 2 sinks (one slow)
                                 `-> input-preview mailbox -> Publisher (bypass, stall fallback)

One run measures, on the wall clock:

A. render hang: time from the hang to ``render: stalled`` and to the first input frame on the
   output; the longest gap between two sends of the healthy sink during the hang (the output clock
   must never stop); time from ``bypass on`` (while still hung) to the first bypassed frame; time
   from the release to ``render: ok`` and processed frames again.
B. slow sink: one sink takes 200 ms per frame; frames the other sink got / ticks published.
C. stuck source: ``read()`` blocks forever; time to ``stalled`` and ``lost`` against the timeouts.

Usage: .venv/bin/python bench/faults.py [--size 256]
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bridge.io.base import Frame, FrameSink, FrameSource, PixelFormat
from bridge.runtime.convert import Resizer
from bridge.runtime.health import SourceHealth
from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import Metrics
from bridge.runtime.packet import FramePacket
from bridge.runtime.publisher import Publisher
from bridge.runtime.source_worker import SourceWorker

FPS = 60.0


class PacedSource(FrameSource):
    """BGRA frames at ``fps`` on absolute deadlines; ``stuck`` makes ``read`` block until released."""

    kind = "synthetic"

    def __init__(self, size: int, fps: float) -> None:
        self._frame = np.full((size, size, 4), 128, np.uint8)
        self._period = 1.0 / fps
        self._next = time.monotonic()
        self._seq = 0
        self.stuck = threading.Event()
        self.unstick = threading.Event()

    def open(self) -> None:
        self._next = time.monotonic()

    def read(self, timeout: float) -> Frame | None:
        if self.stuck.is_set():
            self.unstick.wait(30.0)
            return None
        wait = self._next - time.monotonic()
        if wait > timeout:
            time.sleep(timeout)
            return None
        if wait > 0:
            time.sleep(wait)
        self._next += self._period
        self._seq += 1
        return Frame(self._frame, PixelFormat.BGRA, seq=self._seq, t_capture=time.monotonic())

    def close(self) -> None:
        pass


class TimedSink(FrameSink):
    kind = "timed"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.times: list[float] = []

    def open(self, width: int, height: int, fps: float) -> None:
        pass

    def send(self, rgb: np.ndarray) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.times.append(time.monotonic())

    def close(self) -> None:
        pass


def _wait(cond, timeout: float = 5.0) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``cond()`` held (polled every 1 ms), or inf."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.001)
    return float("inf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(f"# bench/faults.py  python {platform.python_version()}  {platform.machine()}  size {args.size}")

    metrics = Metrics()
    frames_in: LatestMailbox[FramePacket] = LatestMailbox(1)
    frames_out: LatestMailbox[FramePacket] = LatestMailbox(1)
    preview: LatestMailbox[FramePacket] = LatestMailbox(1)
    source = PacedSource(args.size, FPS)
    worker = SourceWorker(lambda: source, Resizer(args.size, args.size), frames_in, metrics, previews=preview,
                          health=SourceHealth(min_stall_s=0.25, lost_after_s=0.75))
    hang, release, stop = threading.Event(), threading.Event(), threading.Event()
    bypass = [False]
    good, slow = TimedSink(), TimedSink(0.2)
    pub = Publisher([good, slow], FPS, lambda: frames_out.get(0), metrics, "slate",
                    source_state=lambda: worker.state, get_input=preview.take_latest, bypass=lambda: bypass[0],
                    watchdog_s=0.5, on_stall="input")

    def render() -> None:  # identity "model" that can hang
        while not stop.is_set():
            packet = frames_in.get(timeout=0.05)
            if packet is None:
                continue
            if hang.is_set():
                release.wait(30.0)
                continue
            frames_out.put(FramePacket(packet.rgb.copy(), packet.t_capture, packet.seq))
            pub.note_render_progress()

    thread = threading.Thread(target=render, daemon=True)
    pub.start()
    thread.start()
    worker.start()
    try:
        assert _wait(lambda: pub.showing == "frame") < 5, "no processed frame"
        t0 = time.monotonic()
        time.sleep(1.0)
        before = np.diff([t for t in good.times if t >= t0])

        # A. render hang
        t_hang = time.monotonic()
        hang.set()
        _wait(lambda: pub.render_state == "stalled")
        to_stall = time.monotonic() - t_hang
        _wait(lambda: pub.showing == "input")
        to_input = time.monotonic() - t_hang
        time.sleep(0.5)
        t_bypass = time.monotonic()
        bypass[0] = True
        to_bypass = _wait(lambda: pub.showing == "input" and pub._input is not None
                          and pub._input.t_capture > t_bypass)
        time.sleep(0.3)
        bypass[0] = False
        t_release = time.monotonic()
        gaps = np.diff([t for t in good.times if t_hang <= t <= t_release])
        hang.clear()
        release.set()
        to_ok = _wait(lambda: pub.render_state == "ok" and pub.showing == "frame")
        print(f"A. render hang: stalled after {1000 * to_stall:.0f} ms (watchdog 500 ms), input on the output "
              f"{1000 * to_input:.0f} ms after the hang; longest gap of the healthy sink during the hang "
              f"{1000 * gaps.max():.1f} ms (the second before the hang: {1000 * before.max():.1f} ms; "
              f"period {1000 / FPS:.1f} ms)")
        print(f"   bypass while hung: a fresh input frame out {1000 * to_bypass:.1f} ms after bypass on; "
              f"render ok {1000 * to_ok:.1f} ms after the release")

        # B. slow sink (over the whole run so far)
        published = metrics.counter("published")
        print(f"B. slow sink (200 ms/frame): healthy sink got {len(good.times)} of {published} ticks "
              f"({100 * len(good.times) / published:.1f} %), slow sink {len(slow.times)}, "
              f"late ticks {metrics.counter('late_ticks')}")

        # C. stuck source
        t_stuck = time.monotonic()
        states: list[tuple[float, str]] = []
        worker.health.add_listener(lambda s, d: states.append((time.monotonic() - t_stuck, s)))
        source.stuck.set()
        _wait(lambda: worker.state == "lost", 5.0)
        got = ", ".join(f"{s} at {1000 * t:.0f} ms" for t, s in states)
        print(f"C. stuck read(): {got} (timeouts: stalled 250 ms, lost 750 ms, after the last frame)")
        source.unstick.set()
    finally:
        stop.set()
        release.set()
        source.unstick.set()
        worker.stop(1.0)
        pub.stop(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
