"""The source worker: one thread that owns a frame source from creation to close.

Every backend call (factory, ``open``, ``read``, ``close``, ``describe``, ``nominal_fps``) happens
on this one thread, as :mod:`bridge.io.base` requires (Spout's GL context is per thread). The
worker also does the pre-processing stage (validate -> RGB -> resize) and runs the input-loss
watchdog (:class:`~bridge.runtime.health.SourceHealth`): it closes a lost source and re-creates it
with backoff until frames flow again. Nothing a source does (raise, hang up, deliver garbage) can
end the thread; only :meth:`SourceWorker.stop` does.

The timeouts are also applied from the clock, not only after ``read`` returns: a small watchdog
thread calls :meth:`SourceWorker.watch` every ``watchdog_interval`` s, so a backend stuck in a
native call still goes ``stalled`` then ``lost`` on time. The stuck source is closed (on the
worker thread, as always) once its call returns; a frame it returns late is dropped.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from bridge.io.base import BackendUnavailable, Frame, FrameError, FrameSource, SourceGone
from bridge.runtime.convert import MAX_DIM, Preprocessor, Resizer, YuvMatrix
from bridge.runtime.health import NO_SIGNAL_STATES, SourceHealth, SourceState
from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import Metrics
from bridge.runtime.packet import FramePacket
from bridge.runtime.throttle import LogThrottle

logger = logging.getLogger(__name__)

__all__ = ["NO_SIGNAL_STATES", "SourceHealth", "SourceState", "SourceWorker"]


def _describe_exc(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class SourceWorker:
    """Capture + pre-process on one thread; puts :class:`FramePacket` ``(rgb, t_capture, seq)``
    items into ``out_mailbox``.

    ``make_source`` is called (on the worker thread) for the first connection and again for every
    reconnection, so each attempt gets a fresh backend object. ``clock`` and ``sleep`` are
    injectable; with the defaults ``sleep`` waits on the stop event, so :meth:`stop` interrupts a
    backoff wait at once. ``previews`` (optional) gets every converted frame too (latest wins):
    the publisher reads it for bypass and the render-stall fallback. ``derive`` (optional) turns each
    packet into the one put into ``out_mailbox`` on this thread (e.g. attaching a ControlNet's edge
    image); a frame it fails on is dropped and counted as ``derive_errors``. ``on_state(state, detail)`` is called once per state change (from the
    worker thread; keep it quick). The state is also published as ``metrics`` state ``source``.
    """

    def __init__(
        self,
        make_source: Callable[[], FrameSource],
        resizer: Resizer,
        out_mailbox: LatestMailbox[FramePacket],
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        *,
        on_state: Callable[[str, str], None] | None = None,
        health: SourceHealth | None = None,
        read_timeout: float = 0.05,
        yuv: YuvMatrix = "auto",
        max_dim: int = MAX_DIM,
        name: str = "source",
        previews: LatestMailbox[FramePacket] | None = None,
        watchdog_interval: float | None = 0.05,
        derive: Callable[[FramePacket], FramePacket] | None = None,
    ) -> None:
        if not 0 < read_timeout <= 0.25:
            raise ValueError(f"read_timeout should be in (0, 0.25] s but is {read_timeout!r}")
        if watchdog_interval is not None and not 0 < watchdog_interval <= 1.0:
            raise ValueError(f"watchdog_interval should be in (0, 1] s but is {watchdog_interval!r}")
        self.name = name
        self._make_source = make_source
        self._pre = Preprocessor(resizer, yuv=yuv, max_dim=max_dim)
        self._out = out_mailbox
        self._previews = previews
        self._derive = derive
        self._derive_log = LogThrottle(10.0, clock)
        self._metrics = metrics
        self._clock = clock
        self._stop_event = threading.Event()
        self._sleep = sleep if sleep is not None else self._stop_event.wait
        self._on_state = on_state
        self._read_timeout = float(read_timeout)
        self.health = health if health is not None else SourceHealth()
        self.health.add_listener(self._state_changed)
        # the worker and the watchdog both drive the health state machine: one at a time
        self._health_lock = threading.RLock()
        self._close_due = False  # the watchdog declared the open source lost while it was busy
        self._watchdog_interval = watchdog_interval
        self._watchdog: threading.Thread | None = None
        self._source: FrameSource | None = None
        self._described = name
        self._thread: threading.Thread | None = None
        self._reject_log = LogThrottle(10.0, clock)
        self._retry_log = LogThrottle(30.0, clock)
        self._crash_log = LogThrottle(10.0, clock)
        self._read_log = LogThrottle(30.0, clock)
        self._input_size: tuple[int, int] | None = None
        self._metrics.set_state("source", self.health.state)
        self._metrics.set_state("source_detail", self.health.detail)

    # -- public ----------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.health.state

    @property
    def detail(self) -> str:
        return self.health.detail

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(width, height) of the last frame received, or None."""
        return self._input_size

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("SourceWorker.start() called twice")
        logger.info("source %s: connecting", self.name)
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._thread.start()
        if self._watchdog_interval is not None:
            self._watchdog = threading.Thread(
                target=self._watch_loop, name=f"source-watchdog-{self.name}", daemon=True
            )
            self._watchdog.start()

    def watch(self, now: float | None = None) -> None:
        """Apply the stall/lost timeouts from the clock, whatever the worker is doing (thread-safe;
        the watchdog thread calls it, tests may too). A source found lost is closed by the worker
        as soon as its backend call returns."""
        with self._health_lock:
            if self.health.poll(self._clock() if now is None else now):
                self._close_due = True
                self._publish_detail()

    def _watch_loop(self) -> None:
        while not self._stop_event.wait(self._watchdog_interval):
            try:
                self.watch()
            except Exception:
                if self._crash_log.hit() is not None:
                    logger.exception("source %s: watchdog failed", self.name)

    def stop(self, timeout: float = 0.5) -> bool:
        """Stop the thread (the source is closed on it). Returns False if it did not end within
        ``timeout`` s (a backend call is blocking); the daemon thread then ends on its own."""
        self._stop_event.set()
        thread = self._thread
        if thread is None:
            self._close_source()
            if self.health.state != SourceState.STOPPED:
                self.health.stop()
            return True
        thread.join(timeout)
        if thread.is_alive():
            logger.warning(
                "source %s: worker still inside a backend call after %.2f s; leaving it",
                self.name,
                timeout,
            )
            return False
        return True

    def step(self) -> None:
        """One iteration: (re)connect if due, else read one frame and apply the timeouts.

        Called in a loop by the worker thread; tests may call it directly (never both)."""
        now = self._clock()
        if self._source is None:
            with self._health_lock:
                due = self.health.attempt_due(now)
            if due:
                self._connect(now)
            else:
                self._sleep(min(max(self.health.next_attempt_at - now, 0.0), 0.05))
            return
        try:
            frame = self._source.read(self._read_timeout)
        except Exception as exc:  # SourceGone or any backend failure: never fatal
            if not isinstance(exc, SourceGone) and self._read_log.hit() is not None:
                # not the documented way to report a loss: a backend bug, keep the traceback
                logger.warning(
                    "source %s: read raised %s", self._described, _describe_exc(exc), exc_info=True
                )
            with self._health_lock:
                if not self._take_close_due():
                    self.health.error(self._clock(), _describe_exc(exc))
                self._publish_detail()
            self._close_source()
            return
        now = self._clock()
        with self._health_lock:
            if self._take_close_due():  # lost on the clock while this read was stuck
                if frame is not None:
                    self._metrics.count("late_frames")
                self._close_source()
                return
            if frame is not None:
                self.health.frame(now)
        if frame is not None:
            self._handle_frame(frame, now)
        with self._health_lock:
            close = self.health.poll(now) or self._take_close_due()
            if close:
                self._publish_detail()
        if close:
            self._close_source()

    def _take_close_due(self) -> bool:
        due, self._close_due = self._close_due, False
        return due

    # -- internals -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop_event.is_set():
                try:
                    self.step()
                except Exception as exc:  # a bug here or in a backend's close(): keep going
                    if self._crash_log.hit() is not None:
                        logger.exception("source %s: unexpected error in the worker", self.name)
                    self._close_source()
                    with self._health_lock:
                        self._close_due = False
                        self.health.error(self._clock(), f"internal error: {_describe_exc(exc)}")
                        self._publish_detail()
                    self._sleep(0.05)
        finally:
            self._close_source()
            with self._health_lock:
                self.health.stop()

    def _connect(self, now: float) -> None:
        with self._health_lock:
            self.health.begin_attempt(now)
        source: FrameSource | None = None
        try:
            source = self._make_source()
            source.open()
        except Exception as exc:
            if source is not None:
                self._safe_close(source)
            with self._health_lock:
                self.health.open_failed(self._clock(), _describe_exc(exc))
                self._publish_detail()
            suppressed = self._retry_log.hit()
            if suppressed is None:
                level = logging.DEBUG
            elif isinstance(exc, BackendUnavailable):  # needs an install, not a retry
                level = logging.ERROR
            else:
                level = logging.INFO
            logger.log(
                level,
                "source %s: connection %s; next try in %.2f s",
                self.name,
                self.health.detail,
                max(0.0, self.health.next_attempt_at - self._clock()),
            )
            return
        self._source = source
        self._retry_log.reset()
        try:
            described = source.describe()
        except Exception:
            described = ""
        self._described = f"{self.name} [{described}]" if described else self.name
        try:
            fps = source.nominal_fps
        except Exception:
            fps = None
        with self._health_lock:
            self._close_due = False
            self.health.opened(self._clock(), fps if isinstance(fps, (int, float)) else None)
        logger.debug("source %s: opened", self._described)

    def _handle_frame(self, frame: Frame, now: float) -> None:
        """Pre-process and queue a frame (``health.frame`` was already told of it)."""
        self._metrics.count("captured")
        try:
            rgb = self._pre(frame)
        except Exception as exc:  # FrameError, or anything OpenCV raises on odd data
            self._metrics.count("rejected_frames")
            suppressed = self._reject_log.hit(now)
            if suppressed is not None:
                kind = "rejected frame" if isinstance(exc, FrameError) else "frame failed"
                logger.warning(
                    "source %s: %s: %s%s",
                    self._described,
                    kind,
                    _describe_exc(exc),
                    f" ({suppressed} more since the last report)" if suppressed else "",
                )
            return
        self._reject_log.reset()
        self._metrics.count("converted")
        size = (frame.width, frame.height)
        if size != self._input_size:
            self._input_size = size
            self._metrics.set_state("input_size", size)
        t_capture = frame.t_capture
        if not isinstance(t_capture, (int, float)) or not math.isfinite(t_capture):
            t_capture = now
        seq = frame.seq if isinstance(frame.seq, int) else 0
        packet = FramePacket(rgb, float(t_capture), seq)
        if self._derive is None:
            self._out.put(packet)
        else:
            try:
                self._out.put(self._derive(packet))
            except Exception as exc:  # e.g. the control image of a ControlNet: drop, count, report
                self._metrics.count("derive_errors")
                suppressed = self._derive_log.hit(now)
                if suppressed is not None:
                    logger.warning("source %s: frame dropped, deriving from it failed: %s%s", self._described,
                                   _describe_exc(exc), f" ({suppressed} more since the last report)" if suppressed else "")
        if self._previews is not None:
            self._previews.put(packet)

    def _close_source(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            self._safe_close(source)

    def _safe_close(self, source: FrameSource) -> None:
        try:
            source.close()
        except Exception as exc:
            logger.debug("source %s: close failed: %s", self._described, _describe_exc(exc))

    def _publish_detail(self) -> None:
        self._metrics.set_state("source_detail", self.health.detail)

    def _state_changed(self, state: str, detail: str) -> None:
        if state in (SourceState.LOST, SourceState.STALLED):
            logger.warning("source %s: %s (%s)", self._described, state, detail)
        else:
            logger.info("source %s: %s (%s)", self._described, state, detail)
        self._metrics.set_state("source", state)
        self._metrics.set_state("source_detail", detail)
        if self._on_state is not None:
            try:
                self._on_state(state, detail)
            except Exception:
                logger.exception("source %s: on_state callback failed", self.name)
