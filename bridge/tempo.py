"""Tempo: the beat clock that quantised recalls, beat-length transitions and synced LFOs follow.

Two clocks with one interface (:class:`TempoClock`):

* :class:`InternalClock`: a beat grid on an injectable clock (``time.monotonic`` by default; tests
  use a manual one). A tempo change keeps the beat position continuous; tap tempo may also move
  the grid so the taps fall on beats.
* :class:`LinkClock`: Ableton Link (the optional ``aalink`` module, ``pip install
  "streambridge[link]"``). It joins the Link session on the local network, follows the session's
  tempo and phase, and pushes our tempo changes to the session. It never moves the session's
  phase (that would pull every other peer along).

Beats count from the clock's origin; bars are ``beats_per_bar`` beats and start where the beat
position is a multiple of it (with Link: where the session's phase for that quantum is 0, so bars
line up with every peer's). :class:`TapTempo` turns taps into a tempo.

Everything here is called from the render thread (the live controller's tick), except reads of
``bpm`` / :meth:`TempoClock.beat_at` for status, which are safe from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol

log = logging.getLogger("streambridge.tempo")

MIN_BPM, MAX_BPM = 20.0, 999.0  # Ableton Link's tempo range
Quantize = Literal["off", "beat", "bar"]
QUANTIZE_MODES: tuple[str, ...] = ("off", "beat", "bar")
LINK_INSTALL = 'pip install "streambridge[link]" (the aalink module)'


class TempoClock(Protocol):
    kind: str  # "internal" or "link"
    beats_per_bar: int

    @property
    def bpm(self) -> float: ...

    def beat_at(self, now: float) -> float: ...

    def set_bpm(self, bpm: float, now: float) -> None: ...

    def align(self, now: float, beat: float) -> None: ...

    def peers(self) -> int: ...

    def close(self) -> None: ...


def check_bpm(bpm: float) -> float:
    if isinstance(bpm, bool) or not isinstance(bpm, (int, float)) or not math.isfinite(bpm):
        raise ValueError(f"tempo should be a finite number, got {bpm!r}")
    if not MIN_BPM <= bpm <= MAX_BPM:
        raise ValueError(f"tempo {bpm!r} bpm is outside {MIN_BPM:g}..{MAX_BPM:g}")
    return float(bpm)


def check_beats_per_bar(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 64:
        raise ValueError(f"beats per bar should be an integer 1..64, got {n!r}")
    return n


def next_boundary(beat: float, unit: float, eps: float = 1e-9) -> float:
    """The first multiple of ``unit`` at or after ``beat`` (a position already on a boundary, to
    within ``eps`` beats, is that boundary)."""
    k = math.ceil(beat / unit - eps)
    return k * unit


def bar_phase(beat: float, beats_per_bar: int) -> float:
    """Position in the bar, in beats: 0 <= phase < beats_per_bar (Link's ``phase``)."""
    return beat - math.floor(beat / beats_per_bar) * beats_per_bar


class InternalClock:
    """A beat grid: ``beat_at(now) = beat0 + (now - t0) * bpm / 60``; the anchor is replaced as a
    whole (one tuple), so a reader on another thread never sees half of a change."""

    kind = "internal"

    def __init__(self, bpm: float = 120.0, beats_per_bar: int = 4,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.beats_per_bar = check_beats_per_bar(beats_per_bar)
        self._clock = clock
        self._anchor = (clock(), 0.0, check_bpm(bpm))  # (t0, beat at t0, bpm)

    @property
    def bpm(self) -> float:
        return self._anchor[2]

    def beat_at(self, now: float) -> float:
        t0, b0, bpm = self._anchor
        return b0 + (now - t0) * bpm / 60.0

    def set_bpm(self, bpm: float, now: float) -> None:
        bpm = check_bpm(bpm)
        self._anchor = (now, self.beat_at(now), bpm)

    def align(self, now: float, beat: float) -> None:
        """Move the grid so that ``beat_at(now) == beat`` (tempo unchanged)."""
        self._anchor = (now, float(beat), self.bpm)

    def peers(self) -> int:
        return 0

    def close(self) -> None:
        pass


class LinkUnavailable(RuntimeError):
    """Ableton Link was asked for but cannot run here (the message says what to install)."""


def link_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("aalink") is not None
    except (ImportError, ValueError):
        return False


class LinkClock:
    """Ableton Link through ``aalink``. ``aalink`` schedules on an asyncio loop, so the Link
    object lives on a small thread of its own that runs one; the beat, phase and tempo reads and
    the tempo write used here are Link's thread-safe application-side calls.

    ``beat_at(now)`` reads the session's beat (Link's own clock) and moves it to ``now`` on our
    clock at the session tempo, so callers can keep using one clock for everything.
    """

    kind = "link"

    def __init__(self, bpm: float = 120.0, beats_per_bar: int = 4,
                 clock: Callable[[], float] = time.monotonic, start_timeout: float = 5.0) -> None:
        try:
            import aalink
        except ImportError as exc:
            raise LinkUnavailable(f"tempo.link needs Ableton Link: {LINK_INSTALL} ({exc})") from None
        self.beats_per_bar = check_beats_per_bar(beats_per_bar)
        self._clock = clock
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="link", daemon=True)
        self._thread.start()

        async def make() -> Any:
            link = aalink.Link(check_bpm(bpm))
            link.quantum = float(self.beats_per_bar)
            link.enabled = True
            return link

        try:
            self._link = asyncio.run_coroutine_threadsafe(make(), self._loop).result(start_timeout)
        except Exception as exc:
            self._stop_loop()
            raise LinkUnavailable(f"tempo.link: cannot start Ableton Link: {exc}") from None
        log.info("Ableton Link enabled (%.2f bpm, %d beats per bar)", bpm, self.beats_per_bar)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2.0)
        if not self._thread.is_alive():
            self._loop.close()

    @property
    def bpm(self) -> float:
        return float(self._link.tempo)

    def beat_at(self, now: float) -> float:
        link = self._link
        beat = float(link.beat)
        return beat + (now - self._clock()) * float(link.tempo) / 60.0

    def set_bpm(self, bpm: float, now: float) -> None:
        self._link.tempo = check_bpm(bpm)

    def align(self, now: float, beat: float) -> None:
        """Never moves a Link session's phase: the other peers own it too."""

    def peers(self) -> int:
        return int(self._link.num_peers)

    def close(self) -> None:
        link = getattr(self, "_link", None)
        if link is not None:
            try:
                link.enabled = False
            except Exception:  # closing must never raise
                log.debug("disabling Link failed", exc_info=True)
        self._stop_loop()


def make_clock(bpm: float, beats_per_bar: int, link: bool,
               clock: Callable[[], float] = time.monotonic) -> TempoClock:
    """The clock the config asks for; :class:`LinkUnavailable` if Link is asked for and missing."""
    if link:
        return LinkClock(bpm, beats_per_bar, clock)
    return InternalClock(bpm, beats_per_bar, clock)


class TapTempo:
    """Taps in, tempo out: the average interval of the last ``max_taps`` taps. A pause longer
    than ``reset_after`` seconds starts a new count; a second tap sooner than ``min_interval``
    (a bouncing button, a press and release both sent) is ignored."""

    def __init__(self, max_taps: int = 8, reset_after: float = 2.0, min_interval: float = 60.0 / MAX_BPM) -> None:
        if max_taps < 2:
            raise ValueError("tap tempo needs at least 2 taps")
        self.reset_after = reset_after
        self.min_interval = min_interval
        self._taps: deque[float] = deque(maxlen=max_taps)

    def tap(self, t: float) -> float | None:
        """Record a tap at time ``t``; the tempo in bpm once two taps are in, else None."""
        if self._taps:
            gap = t - self._taps[-1]
            if gap > self.reset_after or gap < 0:
                self._taps.clear()
            elif gap < self.min_interval:
                return None
        self._taps.append(t)
        if len(self._taps) < 2:
            return None
        interval = (self._taps[-1] - self._taps[0]) / (len(self._taps) - 1)
        return min(MAX_BPM, max(MIN_BPM, 60.0 / interval))

    @property
    def count(self) -> int:
        return len(self._taps)
