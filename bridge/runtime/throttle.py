"""Rate limiting for log lines about problems that can repeat every frame."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class LogThrottle:
    """Say when a repeating problem deserves a log line.

    The first occurrence of a burst is always logged; after that at most one line per
    ``interval_s``, carrying how many occurrences were suppressed in between. :meth:`reset` ends
    the burst (e.g. when the sink works again) and returns how many occurrences it had.
    """

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = float(interval_s)
        self._clock = clock
        self._last_log = -math.inf
        self._suppressed = 0
        self._in_burst = 0

    @property
    def burst(self) -> int:
        """Occurrences since the burst began (0 when none)."""
        return self._in_burst

    def hit(self, now: float | None = None) -> int | None:
        """Record one occurrence. Returns None to stay quiet, or the number of occurrences
        suppressed since the previous log line (0 for the first of a burst) to log now."""
        t = self._clock() if now is None else now
        self._in_burst += 1
        if self._in_burst == 1 or t - self._last_log >= self.interval_s:
            suppressed = self._suppressed
            self._suppressed = 0
            self._last_log = t
            return suppressed
        self._suppressed += 1
        return None

    def reset(self) -> int:
        """End the current burst; returns how many occurrences it had."""
        n = self._in_burst
        self._in_burst = 0
        self._suppressed = 0
        self._last_log = -math.inf
        return n
