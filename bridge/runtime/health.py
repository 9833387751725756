"""The input-loss watchdog as a pure state machine: events + timestamps in, states out.

No threads, no sleeping, no clock of its own: :class:`SourceHealth` is driven by the source worker
(or a test) with explicit ``now`` values, so every timeout and backoff is testable exactly.

States (plain strings, as reported over OSC)::

    connecting --frame--> live --silence >= stall--> stalled --frame--> live
                           |                           |
                           +-- error, or silence >= lost timeout --+--> lost
    lost --first retry--> reconnecting --frame--> live

``connecting`` is the start-up state (no frame seen yet). ``lost`` and ``reconnecting`` are each
entered once per outage: failed attempts keep the state ``reconnecting`` (only the detail
changes), so a sender that is gone for an hour gives two state changes, not thousands.
Retries are spaced by a backoff of 0.25 s doubling to 5 s, reset once frames flow again.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Callable

logger = logging.getLogger(__name__)


class SourceState:
    """The state names (plain ``str`` values)."""

    CONNECTING = "connecting"
    LIVE = "live"
    STALLED = "stalled"
    LOST = "lost"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"

    ALL: tuple[str, ...] = (CONNECTING, LIVE, STALLED, LOST, RECONNECTING, STOPPED)


NO_SIGNAL_STATES: frozenset[str] = frozenset(
    {SourceState.CONNECTING, SourceState.LOST, SourceState.RECONNECTING, SourceState.STOPPED}
)
"""States in which there is no input signal (the publisher shows its no-signal card)."""

StateListener = Callable[[str, str], None]


class SourceHealth:
    """Per-source state machine.

    * stall timeout = max(``min_stall_s``, ``stall_intervals`` x frame interval), the interval
      being the median of recent intervals or, before there are any, 1 / the nominal fps;
    * lost timeout = max(``lost_after_s``, 2 x stall timeout) of silence, or at once on an error;
    * a freshly opened source that gives no frame within the lost timeout counts as a failed
      attempt (closed and retried: an NDI finder must be re-created, for instance);
    * retry delays: ``backoff_initial_s`` doubling up to ``backoff_max_s``; reset when live.
    """

    def __init__(
        self,
        *,
        min_stall_s: float = 0.25,
        stall_intervals: float = 3.0,
        lost_after_s: float = 1.0,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 5.0,
        interval_window: int = 15,
    ) -> None:
        if not 0 < min_stall_s < lost_after_s:
            raise ValueError(
                f"need 0 < min_stall_s < lost_after_s, got {min_stall_s} and {lost_after_s}"
            )
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError(
                f"need 0 < backoff_initial_s <= backoff_max_s, got {backoff_initial_s} "
                f"and {backoff_max_s}"
            )
        self.min_stall_s = float(min_stall_s)
        self.stall_intervals = float(stall_intervals)
        self.lost_after_s = float(lost_after_s)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self._listeners: list[StateListener] = []
        self._intervals: deque[float] = deque(maxlen=max(1, int(interval_window)))
        self._median: float | None = None
        self._nominal_fps: float | None = None
        self.state: str = SourceState.CONNECTING
        self.detail: str = "waiting for the first frame"
        self.is_open = False
        self.opened_at = -math.inf
        self.last_frame_at: float | None = None
        self.outage_started_at: float | None = None
        self.failed_attempts = 0
        self.next_attempt_at = -math.inf
        self.backoff_s = self.backoff_initial_s  # the delay the next failure will schedule

    # -- listeners -----------------------------------------------------------------------------

    def add_listener(self, listener: StateListener) -> None:
        """``listener(state, detail)`` is called once per state change."""
        self._listeners.append(listener)

    def _set(self, state: str, detail: str) -> None:
        self.detail = detail
        if state == self.state:
            return
        self.state = state
        for listener in list(self._listeners):
            try:
                listener(state, detail)
            except Exception:
                logger.exception("source state listener failed (state %s)", state)

    # -- timing ----------------------------------------------------------------------------------

    @property
    def interval_samples(self) -> int:
        """How many recent frame intervals :meth:`interval_estimate` is based on."""
        return len(self._intervals)

    def interval_estimate(self) -> float | None:
        """Recent frame interval in seconds (median), else 1/nominal fps, else None."""
        if self._intervals:
            if self._median is None:
                self._median = statistics.median(self._intervals)
            return self._median
        if self._nominal_fps:
            return 1.0 / self._nominal_fps
        return None

    def stall_timeout(self) -> float:
        interval = self.interval_estimate()
        if interval is None:
            return self.min_stall_s
        return max(self.min_stall_s, self.stall_intervals * interval)

    def lost_timeout(self) -> float:
        return max(self.lost_after_s, 2.0 * self.stall_timeout())

    def _schedule_retry(self, now: float) -> None:
        self.is_open = False
        self.next_attempt_at = now + self.backoff_s
        self.backoff_s = min(self.backoff_s * 2.0, self.backoff_max_s)

    # -- events ----------------------------------------------------------------------------------

    def attempt_due(self, now: float) -> bool:
        """True when the source is closed and the next (re)connection attempt is due."""
        return (
            not self.is_open and self.state != SourceState.STOPPED and now >= self.next_attempt_at
        )

    def begin_attempt(self, now: float) -> None:
        """The worker is about to create and open the source."""
        if self.state == SourceState.LOST:
            self._set(SourceState.RECONNECTING, f"attempt {self.failed_attempts + 1}")

    def opened(self, now: float, nominal_fps: float | None = None) -> None:
        """The source opened; frames are expected within the lost timeout."""
        self.is_open = True
        self.opened_at = now
        self.last_frame_at = None
        self._intervals.clear()
        self._median = None
        fps = nominal_fps if nominal_fps and math.isfinite(nominal_fps) else None
        self._nominal_fps = fps if fps and fps > 0 else None

    def open_failed(self, now: float, detail: str) -> None:
        """Creating or opening the source failed; retry after the backoff."""
        self.failed_attempts += 1
        self._schedule_retry(now)
        self.detail = f"attempt {self.failed_attempts} failed: {detail}"

    def frame(self, now: float) -> None:
        """A new frame arrived."""
        if self.state == SourceState.LIVE and self.last_frame_at is not None:
            self._intervals.append(max(0.0, now - self.last_frame_at))
            self._median = None
        self.last_frame_at = now
        if self.state != SourceState.LIVE:
            previous = self.state
            if previous == SourceState.STALLED:
                detail = "frames resumed"
            elif self.outage_started_at is not None:
                detail = (
                    f"back after {now - self.outage_started_at:.2f} s,"
                    f" {self.failed_attempts} failed attempts"
                )
            else:
                detail = "first frame"
                if self.failed_attempts:
                    detail += f" after {self.failed_attempts} failed attempts"
            self.failed_attempts = 0
            self.backoff_s = self.backoff_initial_s
            self.outage_started_at = None
            self._set(SourceState.LIVE, detail)

    def error(self, now: float, detail: str) -> None:
        """The source raised (SourceGone or anything else): it is closed and retried."""
        if self.state in (SourceState.LIVE, SourceState.STALLED):
            self.outage_started_at = now
            self._schedule_retry(now)
            self._set(SourceState.LOST, detail)
        else:
            self.failed_attempts += 1
            self._schedule_retry(now)
            self.detail = f"attempt {self.failed_attempts} failed: {detail}"

    def poll(self, now: float) -> bool:
        """Apply the timeouts. Returns True when the caller must close the source now."""
        if not self.is_open:
            return False
        if self.state in (SourceState.LIVE, SourceState.STALLED):
            last = self.last_frame_at if self.last_frame_at is not None else self.opened_at
            silent = now - last
            if silent >= self.lost_timeout():
                self.outage_started_at = now
                self._schedule_retry(now)
                self._set(SourceState.LOST, f"no frame for {silent:.2f} s")
                return True
            if self.state == SourceState.LIVE and silent >= self.stall_timeout():
                self._set(SourceState.STALLED, f"no new frame for {silent:.2f} s")
            return False
        waited = now - self.opened_at
        if waited >= self.lost_timeout():
            self.failed_attempts += 1
            self._schedule_retry(now)
            self.detail = (
                f"attempt {self.failed_attempts} failed: opened but no frame in {waited:.2f} s"
            )
            return True
        return False

    def stop(self) -> None:
        self.is_open = False
        self._set(SourceState.STOPPED, "worker stopped")
