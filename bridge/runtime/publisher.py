"""The publisher: one thread that feeds every sink at a steady frame rate.

Downstream receivers (Resolume, TouchDesigner, OBS) must never see a dead sender, so the
publisher sends on every tick of an absolute-deadline clock whatever happens upstream:

* the newest processed frame if one arrived since the last tick, else the last one again;
* while the source is lost (``lost``/``reconnecting``/...), the ``no_signal`` choice: ``hold``
  (last frame), ``black`` or ``slate`` (a "NO SIGNAL" card with the time since the loss);
* before the first frame exists, the slate (or black) card - never nothing.

**Phase lock.** With nearly equal clocks (a 60 fps stream into a 60 Hz output), a tick grid that
happens to sit on the frames' arrival times turns their jitter into a coin toss per tick: a frame
is dropped, the next tick repeats the one before, several times a second (visible judder). Given
the arrival time of each frame it takes (``arrivals``), the publisher nudges its grid by a small,
bounded step per new frame (10 % of the phase error, at most 2 % of a period) so that ticks settle
half a period after the arrivals, as far as possible from either side. It only does so while
frames come no faster than the ticks (interval >= 0.97 period), so the output rate never follows
a faster source; a slower one (30 fps into 60 Hz) gets each frame shown for the same number of
ticks. The grid stays absolute; the nudges move it by at most 2 % of the rate.

**Render watchdog.** With ``watchdog_s`` set, the publisher watches the render thread from the
outside: while the source is ``live`` (and bypass is off), no processed frame and no progress
note (:meth:`Publisher.note_render_progress`) for ``watchdog_s`` makes the render state
``stalled`` and the output shows ``on_stall``: the newest input frame (``input``), ``black``, a
"RENDER STALLED" ``slate`` or the last processed frame (``hold``). The first processed frame
after that makes it ``ok`` again. **Bypass** (``bypass()`` true) shows the newest input frame,
taken from ``get_input`` (a mailbox the source worker feeds directly): neither bypass nor the stall
fallback goes through the render thread, so a model stuck in a GPU call cannot block them. After
bypass ends the input stays up until the first processed frame made after it arrives.

Each sink is isolated (:mod:`bridge.runtime.sink_worker`): it has its own worker thread and a
latest-wins mailbox, and the clock only hands frames to those mailboxes. A slow sink drops frames
(counted) instead of delaying the clock or another sink; an exception in one is logged (first of a
burst, then at most every 10 s), counted, and that sink is closed and re-opened with backoff on
its own thread. All calls into one sink (factory, ``open``, ``send``, ``close``) happen on its
worker thread (``threaded_sinks=False``: on the caller's thread, for tests on a manual clock).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from bridge.io.base import FrameSink
from bridge.runtime.cards import CardCache
from bridge.runtime.convert import MAX_DIM, ResizePolicy, Resizer
from bridge.runtime.health import NO_SIGNAL_STATES, SourceState
from bridge.runtime.metrics import Metrics
from bridge.runtime.packet import FramePacket
from bridge.runtime.sink_worker import SinkWorker
from bridge.runtime.throttle import LogThrottle

logger = logging.getLogger(__name__)

NoSignalMode = Literal["hold", "black", "slate"]
NO_SIGNAL_MODES: tuple[str, ...] = ("hold", "black", "slate")
StallMode = Literal["input", "black", "slate", "hold"]
STALL_MODES: tuple[str, ...] = ("input", "black", "slate", "hold")


class RenderState:
    """Render health as the publisher sees it (plain ``str`` values, as reported over OSC)."""

    OK = "ok"
    STALLED = "stalled"
MAX_FPS = 10_000.0
PHASE_GAIN = 0.1  # share of the phase error corrected per new frame
PHASE_MAX_STEP = 0.02  # largest nudge per new frame, in periods (also the largest rate change)
PHASE_MIN_INTERVAL = 0.97  # lock only while frames come at most this much faster than the ticks

SinkLike = FrameSink | Callable[[], FrameSink]


class TickSchedule:
    """Absolute deadlines ``start + k * period``: no drift however long the run.

    After a tick finished at ``now``, :meth:`advance` moves to the next deadline. If whole tick
    slots have passed meanwhile they are skipped (counted), never sent back to back: at most one
    tick happens late, at once, and the schedule is back on its grid.
    """

    def __init__(self, period: float, start: float) -> None:
        if not period > 0:
            raise ValueError(f"period must be > 0, got {period!r}")
        self.period = float(period)
        self.start = float(start)
        self.index = 0

    @property
    def deadline(self) -> float:
        return self.start + self.index * self.period

    def nudge(self, dt: float) -> None:
        """Shift the grid by ``dt`` seconds (positive: later)."""
        self.start += float(dt)

    def advance(self, now: float) -> int:
        """Move past the tick just done; returns the number of tick slots skipped."""
        current_slot = math.floor((now - self.start) / self.period)
        nxt = self.index + 1
        if current_slot > nxt:
            skipped = current_slot - nxt
            self.index = current_slot
            return skipped
        self.index = nxt
        return 0

    def reset(self, period: float, now: float) -> None:
        """Re-anchor on a new period; the next tick is one new period from ``now``."""
        if not period > 0:
            raise ValueError(f"period must be > 0, got {period!r}")
        self.period = float(period)
        self.start = float(now) + self.period
        self.index = 0


def _describe_exc(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _as_packet(item: Any) -> FramePacket:
    """Check a frame handed over by another thread; raises on anything but H x W x 3 uint8."""
    rgb, t_capture, seq = item
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"frame is a {type(rgb).__name__}, not a numpy array")
    if (
        rgb.dtype != np.uint8
        or rgb.ndim != 3
        or rgb.shape[2] != 3
        or not 1 <= rgb.shape[0] <= MAX_DIM
        or not 1 <= rgb.shape[1] <= MAX_DIM
    ):
        raise ValueError(f"expected H x W x 3 uint8, got {rgb.shape} {rgb.dtype}")
    return FramePacket(np.ascontiguousarray(rgb), float(t_capture), int(seq))


class Publisher:
    """Send frames to ``sinks`` at ``fps`` on one thread.

    ``get_latest()`` must not block; it returns the next processed :class:`FramePacket` (or an
    ``(rgb, t_capture, seq)`` tuple) or None (e.g. ``LatestMailbox.take_latest``, or
    ``lambda: box.get(0)`` to send a burst of frames one per tick).
    ``arrivals()`` (optional) returns ``(ordinal, put time)`` of the packet just taken, as
    ``LatestMailbox.last_taken`` does, on the publisher's clock; with ``phase_lock`` the tick grid
    follows them (see the module docstring).
    ``source_state()`` returns the source state string. ``sinks`` holds :class:`FrameSink`
    objects or factories returning one; a factory is called on the publisher thread and again
    after every failure, so a broken sink is re-created, not only re-opened.

    Sinks must treat the array they get as read-only: the same array is sent again on repeats.

    ``size`` = (width, height) scales every frame to that output size with ``scale_policy``;
    without it the output takes each frame's size (sinks are re-opened when it changes) and
    cards before the first frame use ``default_size``.
    """

    def __init__(
        self,
        sinks: Sequence[SinkLike],
        fps: float,
        get_latest: Callable[[], FramePacket | tuple[np.ndarray, float, int] | None],
        metrics: Metrics,
        no_signal: NoSignalMode = "slate",
        source_state: Callable[[], str] = lambda: SourceState.LIVE,
        *,
        size: tuple[int, int] | None = None,
        default_size: tuple[int, int] = (512, 512),
        scale_policy: ResizePolicy = "fit",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 5.0,
        slate_title: str = "NO SIGNAL",
        name: str = "publisher",
        arrivals: Callable[[], tuple[int, float] | None] | None = None,
        phase_lock: bool = True,
        get_input: Callable[[], FramePacket | None] | None = None,
        bypass: Callable[[], bool] | None = None,
        watchdog_s: float | None = None,
        on_stall: StallMode = "input",
        on_render_state: Callable[[str, str], None] | None = None,
        threaded_sinks: bool = True,
    ) -> None:
        self._check_fps(fps)
        self._check_mode(no_signal)
        if on_stall not in STALL_MODES:
            raise ValueError(f"on_stall should be one of {STALL_MODES} but is {on_stall!r}")
        if watchdog_s is not None and not (0 < watchdog_s < math.inf):
            raise ValueError(f"watchdog_s should be > 0 s (or None: off) but is {watchdog_s!r}")
        for label, value in (("size", size), ("default_size", default_size)):
            if value is not None and (
                len(value) != 2 or not all(1 <= int(v) <= MAX_DIM for v in value)
            ):
                raise ValueError(f"{label} should be (width, height) within 1..{MAX_DIM}: {value}")
        self.name = name
        self._fps = float(fps)
        self._fps_changed = False
        self._get_latest = get_latest
        self._metrics = metrics
        self._mode: NoSignalMode = no_signal
        self._source_state = source_state
        self._size = (int(size[0]), int(size[1])) if size is not None else None
        self._default_size = (int(default_size[0]), int(default_size[1]))
        self._resizer = Resizer(*self._size, scale_policy) if self._size is not None else None
        self._clock = clock
        self._stop_event = threading.Event()
        self._sleep = sleep if sleep is not None else self._stop_event.wait
        self._backoff_initial = float(backoff_initial_s)
        self._backoff_max = float(backoff_max_s)
        self._cards = CardCache(slate_title)
        self._stall_cards = CardCache("RENDER STALLED")
        self._get_input = get_input
        self._bypass = bypass
        self._watchdog_s = None if watchdog_s is None else float(watchdog_s)
        self._on_stall: StallMode = on_stall
        self._on_render_state = on_render_state
        self._input: FramePacket | None = None  # the newest input frame (for bypass / stall)
        self._input_out: np.ndarray | None = None  # _input scaled to the output size
        self._render_ref: float | None = None  # last render progress (or grace start), our clock
        self._progress_at: float | None = None  # set by note_render_progress (render thread)
        self._was_live = False
        self._was_bypass = False
        self._stall_since: float | None = None
        self._await_processed = False  # after bypass: input until a processed frame arrives
        self.render_state = RenderState.OK
        self.render_detail = ""
        self.render_stalls = 0
        self._stall_log = LogThrottle(10.0, clock)
        self._stall_logged = False
        self._slots: list[SinkWorker] = []
        for i, item in enumerate(sinks):
            if isinstance(item, FrameSink):
                sink, factory = item, None
            elif callable(item):
                sink, factory = None, item
            else:
                raise TypeError(f"sink {i} is neither a FrameSink nor a factory: {item!r}")
            self._slots.append(
                SinkWorker(
                    i, sink, factory, metrics, clock=clock, backoff_initial_s=self._backoff_initial,
                    backoff_max_s=self._backoff_max, threaded=threaded_sinks, owner=name,
                )
            )
        self._last: FramePacket | None = None
        self._last_out: np.ndarray | None = None  # _last scaled to the output size
        self._last_sent = True
        self._frame_size: tuple[int, int] | None = None  # of the newest frame, kept over outages
        self._outage_since: float | None = None
        self._input_log = LogThrottle(10.0, clock)
        self._loop_log = LogThrottle(10.0, clock)
        self._thread: threading.Thread | None = None
        self._arrivals = arrivals if phase_lock else None
        self._arrival: float | None = None  # of the frame taken in this tick
        self._prev_arrival: tuple[int, float] | None = None
        self.frame_interval: float | None = None  # smoothed, from arrival ordinals and times
        self.phase_offset: float | None = None  # last tick time - arrival time of its new frame
        self.showing = "none"
        self.last_frame: np.ndarray | None = None  # what the sinks were sent last (frame or card)
        self.ticks = 0

    # -- configuration ---------------------------------------------------------------------------

    @staticmethod
    def _check_fps(fps: float) -> None:
        if not isinstance(fps, (int, float)) or not 0 < fps <= MAX_FPS or math.isnan(fps):
            raise ValueError(f"fps should be in (0, {MAX_FPS:g}] but is {fps!r}")

    @staticmethod
    def _check_mode(mode: str) -> None:
        if mode not in NO_SIGNAL_MODES:
            raise ValueError(f"no_signal should be one of {NO_SIGNAL_MODES} but is {mode!r}")

    @property
    def fps(self) -> float:
        return self._fps

    def set_fps(self, fps: float) -> None:
        """Change the output rate; the schedule re-anchors on the next tick."""
        self._check_fps(fps)
        self._fps = float(fps)
        self._fps_changed = True

    @property
    def no_signal(self) -> NoSignalMode:
        return self._mode

    def set_no_signal(self, mode: NoSignalMode) -> None:
        self._check_mode(mode)
        self._mode = mode

    @property
    def on_stall(self) -> StallMode:
        return self._on_stall

    @property
    def last_input(self) -> np.ndarray | None:
        """The newest input frame the publisher has seen (for previews), or None."""
        packet = self._input
        return None if packet is None else packet.rgb

    def note_render_progress(self) -> None:
        """Called by the render thread after each finished call (also one the similarity filter
        skipped, which sends no frame): the render is alive. Thread-safe (one float store)."""
        self._progress_at = self._clock()

    def sink_stats(self) -> list[dict[str, Any]]:
        """Per sink: name, open, state (idle/open/retrying/closed), sends, dropped (replaced by a
        newer frame before the sink took it), errors, last_error."""
        return [s.stats() for s in self._slots]

    # -- thread ----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("Publisher.start() called twice")
        for slot in self._slots:
            slot.start()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 0.5) -> bool:
        """Stop the thread; sinks are closed on it. False if it did not end within ``timeout``."""
        self._stop_event.set()
        thread = self._thread
        if thread is None:
            self._close_all()
            return True
        thread.join(timeout)
        if thread.is_alive():
            logger.warning(
                "%s: still inside a sink call after %.2f s; leaving it", self.name, timeout
            )
            return False
        return True

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        schedule = TickSchedule(1.0 / self._fps, self._clock())
        try:
            while not self._stop_event.is_set():
                now = self._clock()
                if now < schedule.deadline:
                    self._sleep(schedule.deadline - now)
                    continue
                try:
                    self.publish_once(now)
                    schedule.nudge(self.phase_step(schedule.deadline, schedule.period))
                except Exception:  # a bug here: log it, keep the output clock running
                    if self._loop_log.hit() is not None:
                        logger.exception("%s: unexpected error in a tick", self.name)
                if self._fps_changed:
                    self._fps_changed = False
                    schedule.reset(1.0 / self._fps, self._clock())
                    continue
                skipped = schedule.advance(self._clock())
                if skipped:
                    self._metrics.count("late_ticks", skipped)
        finally:
            self._close_all()

    # -- one tick --------------------------------------------------------------------------------

    def publish_once(self, now: float | None = None) -> np.ndarray:
        """Pick what to show, send it to every sink, record metrics. Returns the frame sent.

        Called by the thread on each tick; tests may call it directly (never both)."""
        if now is None:
            now = self._clock()
        got_new = self._take_new_frame()
        self._take_input()
        state = self._read_state()
        bypass = self._read_bypass()
        no_signal = state in NO_SIGNAL_STATES
        if no_signal:
            if self._outage_since is None:
                self._outage_since = now
            if self._mode != "hold" and self._last is not None:
                # Forget the pre-outage picture: after recovery the card stays up until a new
                # frame arrives, instead of flashing a stale one (with a bogus latency).
                self._last = None
                self._last_out = None
            self._input = None  # nor a stale input frame
            self._input_out = None
        else:
            self._outage_since = None
        if got_new:
            self._await_processed = False
        if self._was_bypass and not bypass and self._get_input is not None:
            self._await_processed = True
        stalled = self._watch_render(now, state, bypass, got_new)

        if no_signal and not (self._last is not None and self._mode == "hold"):
            frame, showing = self._card(self._mode, state, now)
        elif bypass and self._input is not None:
            frame, showing = self._input_frame(), "input"
        elif stalled and self._on_stall != "hold":
            if self._on_stall == "input" and self._input is not None:
                frame, showing = self._input_frame(), "input"
            elif self._on_stall == "input" and self._last is not None:
                frame, showing = self._output_frame(), "frame"
            else:
                frame, showing = self._card(self._on_stall, state, now, stall=True)
        elif self._await_processed and self._input is not None:
            frame, showing = self._input_frame(), "input"
        elif self._last is not None:
            frame = self._output_frame()
            showing = "frame"
        else:
            frame, showing = self._card(self._mode, state, now)

        delivered = self._send_all(frame, now)
        self.last_frame = frame
        self.ticks += 1
        self._metrics.count("published")
        if showing == "frame":
            if not self._last_sent:
                self._last_sent = True
                self._metrics.count("published_new")
                if delivered and self._last is not None:
                    latency = self._clock() - self._last.t_capture
                    self._metrics.record_latency("end_to_end", latency)
            else:
                self._metrics.count("repeated")
        elif showing == "input":
            self._metrics.count("published_input")
        if showing != self.showing:
            self.showing = showing
            self._metrics.set_state("output", showing)
        return frame

    def _take_new_frame(self) -> bool:
        try:
            item = self._get_latest()
        except Exception as exc:
            if self._input_log.hit() is not None:
                logger.warning("%s: get_latest failed: %s", self.name, _describe_exc(exc))
            return False
        if item is None:
            return False
        try:
            packet = _as_packet(item)
        except Exception as exc:
            self._metrics.count("rejected_outputs")
            if self._input_log.hit() is not None:
                logger.warning(
                    "%s: ignoring a bad processed frame: %s", self.name, _describe_exc(exc)
                )
            return False
        self._last = packet
        self._last_out = None
        self._frame_size = (int(packet.rgb.shape[1]), int(packet.rgb.shape[0]))
        self._last_sent = False
        self._note_arrival()
        return True

    def _take_input(self) -> None:
        if self._get_input is None:
            return
        try:
            item = self._get_input()
            if item is None:
                return
            packet = _as_packet(item)
        except Exception as exc:
            if self._input_log.hit() is not None:
                logger.warning("%s: ignoring an input frame: %s", self.name, _describe_exc(exc))
            return
        self._input = packet
        self._input_out = None
        if self._frame_size is None:
            self._frame_size = (int(packet.rgb.shape[1]), int(packet.rgb.shape[0]))

    def _read_bypass(self) -> bool:
        if self._bypass is None:
            return False
        try:
            return bool(self._bypass())
        except Exception as exc:
            if self._input_log.hit() is not None:
                logger.warning("%s: bypass flag failed: %s", self.name, _describe_exc(exc))
            return False

    def _watch_render(self, now: float, state: str, bypass: bool, got_new: bool) -> bool:
        """Update the render state; True while it is stalled."""
        progress, self._progress_at = self._progress_at, None
        live = state == SourceState.LIVE
        if got_new or progress is not None:
            self._render_ref = now
            if self.render_state == RenderState.STALLED:
                took = now - self._stall_since if self._stall_since is not None else 0.0
                self._set_render(RenderState.OK, f"frames again after {took:.2f} s")
        if (live and not self._was_live) or (self._was_bypass and not bypass):
            self._render_ref = now  # a grace period from the moment the render has work again
        self._was_live = live
        self._was_bypass = bypass
        if self._watchdog_s is None or bypass or not live or self._render_ref is None:
            return self.render_state == RenderState.STALLED
        silent = now - self._render_ref
        if self.render_state == RenderState.OK and silent >= self._watchdog_s:
            self._stall_since = self._render_ref
            self._set_render(
                RenderState.STALLED, f"no processed frame for {silent:.2f} s (input is live)"
            )
        return self.render_state == RenderState.STALLED

    def _set_render(self, state: str, detail: str) -> None:
        self.render_state = state
        self.render_detail = detail
        self._metrics.set_state("render", state)
        if state == RenderState.STALLED:
            self.render_stalls += 1
            suppressed = self._stall_log.hit()  # a render flapping around the timeout: 1 line/10 s
            self._stall_logged = suppressed is not None
            if self._stall_logged:
                more = f" ({suppressed} more stalls since the last report)" if suppressed else ""
                logger.warning(
                    "%s: render %s: %s; showing %s%s", self.name, state, detail, self._on_stall, more
                )
        elif self._stall_logged:
            logger.info("%s: render %s (%s)", self.name, state, detail)
        if self._on_render_state is not None:
            try:
                self._on_render_state(state, detail)
            except Exception:
                logger.exception("%s: on_render_state callback failed", self.name)

    def _card(
        self, mode: str, state: str, now: float, stall: bool = False
    ) -> tuple[np.ndarray, str]:
        width, height = self._output_size()
        if mode == "black":
            return self._cards.black(width, height), "black"
        if stall:
            since = self._stall_since if self._stall_since is not None else now
            return self._stall_cards.slate(width, height, f"{int(now - since)} s"), "slate"
        return self._cards.slate(width, height, self._slate_text(state, now)), "slate"

    def _input_frame(self) -> np.ndarray:
        assert self._input is not None
        if self._input_out is None:
            rgb = self._input.rgb
            self._input_out = self._resizer(rgb) if self._resizer is not None else rgb
        return self._input_out

    def _note_arrival(self) -> None:
        """Record when the frame just taken arrived, and the smoothed interval between frames."""
        if self._arrivals is None:
            return
        try:
            info = self._arrivals()
        except Exception as exc:
            if self._input_log.hit() is not None:
                logger.warning("%s: arrivals failed: %s", self.name, _describe_exc(exc))
            return
        if info is None:
            return
        ordinal, t = int(info[0]), float(info[1])
        prev = self._prev_arrival
        if prev is not None and t <= prev[1]:
            return  # a later frame of a burst put at once (frame buffer > 1): lock to its first
        if prev is not None and ordinal > prev[0]:
            interval = (t - prev[1]) / (ordinal - prev[0])
            fi = self.frame_interval
            self.frame_interval = interval if fi is None else 0.8 * fi + 0.2 * interval
        self._prev_arrival = (ordinal, t)
        self._arrival = t

    def phase_step(self, tick_time: float, period: float) -> float:
        """The nudge (s, positive: later) for the tick at ``tick_time`` just published; 0 when it
        took no new frame, when frames come faster than the ticks, or without arrival times."""
        arrival, self._arrival = self._arrival, None
        if arrival is None:
            return 0.0
        offset = min(max(tick_time - arrival, 0.0), period)
        self.phase_offset = offset
        if self.frame_interval is None or self.frame_interval < PHASE_MIN_INTERVAL * period:
            return 0.0
        error = offset - period / 2  # > 0: the tick comes too long after the frame
        limit = PHASE_MAX_STEP * period
        return -max(-limit, min(limit, PHASE_GAIN * error))

    def _read_state(self) -> str:
        try:
            return str(self._source_state())
        except Exception as exc:
            if self._input_log.hit() is not None:
                logger.warning("%s: source_state failed: %s", self.name, _describe_exc(exc))
            return "unknown"

    def _output_size(self) -> tuple[int, int]:
        if self._size is not None:
            return self._size
        return self._frame_size or self._default_size

    def _output_frame(self) -> np.ndarray:
        assert self._last is not None
        if self._last_out is None:
            rgb = self._last.rgb
            self._last_out = self._resizer(rgb) if self._resizer is not None else rgb
        return self._last_out

    def _slate_text(self, state: str, now: float) -> str:
        if state in (SourceState.CONNECTING, "unknown"):
            return "waiting for source"
        if state not in NO_SIGNAL_STATES:
            return "waiting for the first frame"
        since = self._outage_since if self._outage_since is not None else now
        return f"source {state} - {int(now - since)} s"

    # -- sinks -----------------------------------------------------------------------------------

    def _send_all(self, frame: np.ndarray, now: float) -> bool:
        delivered = False
        for slot in self._slots:
            delivered = slot.offer(frame, self._fps) or delivered
        return delivered

    def _close_all(self) -> None:
        for slot in self._slots:
            slot.stop(timeout=0.5)
