"""A log that cannot be flooded: a few lines per interval, then one line with the count of the rest.

A sender that streams bad packets must not fill the disk with one log line per packet. Within each
``interval`` the first ``burst`` messages are logged as they come; the others are only counted,
and the next call after the interval (or :meth:`RateLimitedLog.flush`) writes
``"... and 1234 more rejected in the last 1.0 s"``. Thread-safe; the clock is injectable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        level: int = logging.INFO,
        *,
        what: str = "rejected",
        interval: float = 1.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0 or burst < 1:
            raise ValueError("interval must be > 0 and burst >= 1")
        self.logger = logger
        self.level = level
        self.what = what
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._in_window = 0
        self._dropped = 0
        self.logged = 0  # lines written, summaries included
        self.dropped_total = 0  # messages folded into a summary

    def log(self, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless over the limit (then count it). Returns True if written."""
        summary = self._roll()
        with self._lock:
            write = self._in_window < self.burst
            if write:
                self._in_window += 1
                self.logged += 1
            else:
                self._dropped += 1
                self.dropped_total += 1
        if summary:
            self._write_summary(*summary)
        if write:
            self.logger.log(self.level, msg, *args)
        return write

    def skip(self, n: int = 1) -> None:
        """Count ``n`` messages that were dropped before reaching this log (they appear in the
        next summary line)."""
        if n > 0:
            with self._lock:
                self._dropped += n
                self.dropped_total += n

    def flush(self) -> int:
        """Write the pending summary now if its interval is over; returns how many it covered."""
        summary = self._roll()
        if summary:
            self._write_summary(*summary)
            return summary[0]
        return 0

    def _roll(self) -> tuple[int, float] | None:
        with self._lock:
            now = self._clock()
            elapsed = now - self._window_start
            if elapsed < self.interval:
                return None
            dropped, self._dropped = self._dropped, 0
            self._window_start = now
            self._in_window = 0
            if dropped:
                self.logged += 1
                return dropped, elapsed
            return None

    def _write_summary(self, dropped: int, elapsed: float) -> None:
        self.logger.log(self.level, "... and %d more %s in the last %.1f s", dropped, self.what, elapsed)
