"""The render loop: the only thread that touches the model.

Each iteration takes the next input frame, applies pending live control (the controller's tick),
runs one stream call and hands the output frames to the publisher's mailbox. What it guards:

* **Non-finite output** (``engine.output_finite`` false after a call): the frames are dropped (the
  publisher holds the last good one), the stream is reset and it is reported: a WARNING log line
  and an ``/sd/error`` reply, both at most once per ``report_interval_s`` with a count.
* **An exception** from a call: the same (the stream state may be half-updated, so it is reset).
* **A gap**: when the source comes back live (:meth:`RenderLoop.request_reset`, called from the
  source worker's state callback) and when bypass ends, the stream buffer and smoothing state are
  reset before the next frame, so no frame after the gap is built on latents from before it.
* **Overlap on a GPU**: the frame's download is asynchronous (pinned memory and a CUDA event), so
  the loop queues frame *t* on the GPU before it waits for frame *t - 1*'s download and hands that
  one on: the CPU never waits for the GPU's newest work, at the price of one frame of latency
  (``overlap``; on by default when the engine runs on CUDA, off on the CPU where nothing is
  asynchronous). A reset drops the frame in flight.
* **ControlNets** (``controlnets``, a :class:`bridge.controlnet.ControlNetFeed`): each input frame
  is paired with the newest control frame of every second source when the loop takes it (the
  moment it enters the stream; never waiting for one), and the stream call gets them as
  ``control=``. Once per iteration the feed's loss factors go to the controller
  (``set_controlnet_gains``), which applies them with the live scales.
* **Bypass**: the loop leaves the model alone; the publisher shows input frames straight from the
  source side, so bypass also works while a call here is stuck.

A hung call cannot be detected from inside: the publisher's render watchdog sees it from outside
(no processed frame and no :meth:`on_progress` for its timeout). ``on_progress`` is called after
every finished call, also one the similarity filter skipped (which sends no frame).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import Metrics
from bridge.runtime.packet import FramePacket
from bridge.runtime.throttle import LogThrottle

log = logging.getLogger("streambridge.render")

RENDER_ADDRESS = "/sd/render"  # the address render problems are reported under on /sd/error


class RenderLoop:
    """One render thread's work. ``engine`` is a :class:`stream_core.engine.StreamEngine` (or
    anything with ``process``, ``pipeline`` (``reset``, ``last_skipped``, ``latency_frames``),
    ``settings.frame_buffer_size`` and ``output_finite``); ``controller`` has ``tick()`` and
    ``values``. ``bypass()`` says whether bypass is on (read every iteration)."""

    def __init__(
        self,
        engine: Any,
        controller: Any,
        frames_in: LatestMailbox[FramePacket],
        frames_out: LatestMailbox[FramePacket],
        metrics: Metrics,
        *,
        bypass: Callable[[], bool] | None = None,
        on_progress: Callable[[], None] | None = None,
        on_error: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        report_interval_s: float = 10.0,
        overlap: bool | None = None,
        controlnets: Any = None,
    ) -> None:
        self.engine = engine
        self.controller = controller
        self.frames_in = frames_in
        self.frames_out = frames_out
        self.metrics = metrics
        self._bypass = bypass if bypass is not None else (lambda: bool(controller.values["bypass"]))
        self._on_progress = on_progress
        self._on_error = on_error
        self._f = int(engine.settings.frame_buffer_size)
        self._latency = int(engine.pipeline.latency_frames)
        self._in_flight: collections.deque[tuple[float, int]] = collections.deque()
        self._pending: list[FramePacket] = []
        self.controlnets = controlnets if controlnets is not None and controlnets.count else None
        self._pending_control: list[list[Any]] = []  # per pending frame: its control images
        self._reset_reason: str | None = None
        self._reset_lock = threading.Lock()
        self._in_bypass = False
        self._error_log = LogThrottle(report_interval_s, clock)
        self._nan_log = LogThrottle(report_interval_s, clock)
        self.frames_rendered = 0
        self.render_errors = 0
        self.nonfinite_outputs = 0
        self.resets = 0
        self.last_error = ""
        self.last_input: np.ndarray | None = None  # the newest input frame taken (a reference)
        if overlap is None:
            runner = getattr(engine, "runner", None)
            device = getattr(getattr(runner, "device", None), "type", None)
            overlap = device == "cuda" and hasattr(engine, "process_async")
        self.overlap = bool(overlap)
        # overlap: the previous call's (pending frame, capture meta, skipped) whose download is in flight
        self._deferred: tuple[Any, list[tuple[float, int]], bool] | None = None

    # -- from other threads ----------------------------------------------------------------------

    def request_reset(self, reason: str) -> None:
        """Reset the stream before the next frame (thread-safe; e.g. the source is live again)."""
        with self._reset_lock:
            self._reset_reason = reason

    # -- the thread ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.step()

    def step(self, timeout: float = 0.05) -> None:
        """One iteration: wait up to ``timeout`` for a frame, tick the controller, render."""
        packet = self.frames_in.get(timeout=timeout)
        try:
            self.controller.tick()
            if self.controlnets is not None:
                self.controller.set_controlnet_gains(self.controlnets.gains())
        except Exception:
            log.exception("control tick failed")
        if self._bypass():
            if not self._in_bypass:
                self._in_bypass = True
                self._drop_stream_state()
            self._progress()  # alive: the publisher shows the input meanwhile
            return
        if self._in_bypass:
            self._in_bypass = False
            self._reset("bypass ended")
        with self._reset_lock:
            reason, self._reset_reason = self._reset_reason, None
        if reason is not None:
            self._reset(reason)
        if packet is None:
            return
        self.last_input = packet.rgb
        if self.controlnets is not None:
            try:  # paired now: the control frames current when this frame enters the stream
                self._pending_control.append(self.controlnets.pair(packet))
            except Exception as exc:
                self._failed(exc)
                return
        self._pending.append(packet)
        if len(self._pending) < self._f:
            return
        batch, self._pending = self._pending, []
        pairs, self._pending_control = self._pending_control, []
        self._render(batch, pairs)

    # -- internals -------------------------------------------------------------------------------

    def _render(self, batch: list[FramePacket], pairs: list[list[Any]] | None = None) -> None:
        engine = self.engine
        f = self._f
        try:
            rgb_in = np.stack([pk.rgb for pk in batch])
            meta = [(pk.t_capture, pk.seq) for pk in batch]
            # `effective`: the values with LFO modulation on top (the fader value without one)
            mix = float(getattr(self.controller, "effective", self.controller.values)["mix"])
            extra: dict[str, Any] = {}
            if self.controlnets is not None:
                extra["control"] = self.controlnets.control_for(pairs or [])
            # the dry/wet mix happens on the device, inside the engine
            if self.overlap:
                pending = engine.process_async(rgb_in, mix=mix if mix < 1.0 else None, **extra)
                previous, self._deferred = self._deferred, (pending, meta, bool(engine.pipeline.last_skipped))
                if previous is None:  # the first call after a (re)start: nothing to hand on yet
                    self._progress()
                    return
                pending, meta, skipped = previous
                out = pending.result()  # queued a whole call ago: normally already in host memory
                finite = pending.finite
            else:
                out = engine.process(rgb_in, mix=mix, **extra) if mix < 1.0 else engine.process(rgb_in, **extra)
                finite = getattr(engine, "output_finite", True)
                skipped = engine.pipeline.last_skipped
            if finite is False:
                self._nonfinite()
                return
            if skipped:
                self.metrics.count("skipped")
                self._progress()
                return
            # the frames leaving now entered `latency` calls ago (while the stream fills, the
            # primed first frame leaves: attribute it to the newest capture)
            self._in_flight.extend(meta)
            if len(self._in_flight) > self._latency * f:
                meta = [self._in_flight.popleft() for _ in range(f)]
            self.frames_rendered += len(batch)
            self.metrics.count("processed", len(batch))
            self.frames_out.put_many(
                [FramePacket(out[j], *meta[min(j, len(meta) - 1)]) for j in range(out.shape[0])]
            )
            self._progress()
        except Exception as exc:  # keep the show going: the publisher holds or falls back
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.render_errors += 1
        self.metrics.count("render_errors")
        self.last_error = f"{type(exc).__name__}: {exc}"
        suppressed = self._error_log.hit()
        if suppressed is not None:
            more = f" ({suppressed} more since the last report)" if suppressed else ""
            log.error("render failed (%d so far): %s%s", self.render_errors, self.last_error, more)
            self._report(f"render failed: {self.last_error}{more}")
        self._reset("render error")

    def _nonfinite(self) -> None:
        self.nonfinite_outputs += 1
        self.metrics.count("nonfinite_outputs")
        self.last_error = "non-finite output (NaN/inf)"
        suppressed = self._nan_log.hit()
        if suppressed is not None:
            more = f" ({suppressed} more since the last report)" if suppressed else ""
            log.warning(
                "render produced a non-finite output (%d so far): holding the last good frame, "
                "stream reset%s", self.nonfinite_outputs, more,
            )
            self._report(f"non-finite output ({self.nonfinite_outputs} so far); stream reset{more}")
        self._reset("non-finite output")

    def _reset(self, reason: str) -> None:
        self._drop_stream_state()
        try:
            self.engine.pipeline.reset()
        except Exception:
            log.exception("stream reset failed (%s)", reason)
            return
        self.resets += 1
        self.metrics.count("stream_resets")
        log.debug("stream reset: %s", reason)

    def _drop_stream_state(self) -> None:
        self._pending.clear()
        self._pending_control.clear()
        self._in_flight.clear()
        self._deferred = None  # a frame in flight was built on the state being dropped

    def _progress(self) -> None:
        if self._on_progress is not None:
            self._on_progress()

    def _report(self, reason: str) -> None:
        if self._on_error is not None:
            try:
                self._on_error(RENDER_ADDRESS, reason)
            except Exception:
                log.exception("reporting a render problem failed")
