"""Cheap thread-safe runtime metrics for the control surface (OSC telemetry, status page).

Recording is O(1) with no allocation beyond a float: counters are ints in a dict, rates and
latencies live in preallocated numpy rings. The work (window scans, percentiles) happens in
:meth:`Metrics.snapshot`, which the control surface calls a few times a second.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

Clock = Callable[[], float]

RATE_STAGES: tuple[str, ...] = ("captured", "converted", "processed", "published", "published_new")
"""Counters that also get a frames-per-second meter."""

CORE_COUNTERS: tuple[str, ...] = (
    "captured",
    "converted",
    "processed",
    "published",
    "published_new",
    "repeated",
    "rejected_frames",
    "sink_errors",
    "late_ticks",
)


class RateMeter:
    """Events per second over a sliding time window (default 1 s).

    Keeps the last ``capacity`` event times; above ``capacity / window_s`` events per second the
    rate comes from the newest ``capacity`` events, which is just as exact. When events stop, the
    open gap counts as an interval, so the rate decays to 0 instead of freezing.
    """

    def __init__(self, window_s: float = 1.0, capacity: int = 512, clock: Clock = time.monotonic):
        if window_s <= 0 or capacity < 2:
            raise ValueError("window_s must be > 0 and capacity >= 2")
        self.window_s = float(window_s)
        self._clock = clock
        self._times = np.full(int(capacity), -np.inf)
        self._next = 0
        self._total = 0
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return self._total

    def tick(self, now: float | None = None) -> None:
        t = self._clock() if now is None else now
        with self._lock:
            self._times[self._next] = t
            self._next = (self._next + 1) % self._times.shape[0]
            self._total += 1

    def rate(self, now: float | None = None) -> float:
        t = self._clock() if now is None else now
        with self._lock:
            times = self._times.copy()
        recent = times[times > t - self.window_s]
        count = int(recent.shape[0])
        if count < 2:
            return 0.0
        oldest = float(recent.min())
        newest = float(recent.max())
        span = newest - oldest
        if span <= 0:
            return 0.0
        interval = span / (count - 1)
        gap = t - newest
        if gap > interval:
            interval = (t - oldest) / count
        return 1.0 / interval


class LatencyStats:
    """Percentiles (in ms) over a ring of the most recent ``capacity`` samples."""

    def __init__(self, capacity: int = 512) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._ring = np.zeros(int(capacity), dtype=np.float64)
        self._next = 0
        self._filled = 0
        self._total = 0
        self._last = math.nan
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        """Record one sample given in seconds (stored in ms). Non-finite values are ignored."""
        if not math.isfinite(seconds):
            return
        ms = seconds * 1000.0
        with self._lock:
            self._ring[self._next] = ms
            self._next = (self._next + 1) % self._ring.shape[0]
            if self._filled < self._ring.shape[0]:
                self._filled += 1
            self._total += 1
            self._last = ms

    @property
    def count(self) -> int:
        return self._total

    def values_ms(self) -> np.ndarray:
        """A copy of the samples currently in the ring (unordered)."""
        with self._lock:
            return self._ring[: self._filled].copy()

    def percentile(self, q: float) -> float:
        values = self.values_ms()
        return float(np.percentile(values, q)) if values.size else math.nan

    def snapshot(self) -> dict[str, float | int | None]:
        with self._lock:
            values = self._ring[: self._filled].copy()
            total = self._total
            last = self._last
        if not values.size:
            return {"count": 0, "p50_ms": None, "p95_ms": None, "max_ms": None, "last_ms": None}
        p50, p95 = np.percentile(values, (50, 95))
        return {
            "count": total,
            "p50_ms": round(float(p50), 3),
            "p95_ms": round(float(p95), 3),
            "max_ms": round(float(values.max()), 3),
            "last_ms": round(float(last), 3),
        }


class _HasCounters(Protocol):
    def counters(self) -> dict[str, int]: ...


class Metrics:
    """All runtime counters, rates, latencies, mailbox counters and states in one place.

    Threads record with :meth:`count`, :meth:`record_latency` and :meth:`set_state`; the control
    surface reads :meth:`snapshot`. Any counter name is allowed (e.g. ``sink_errors:0:ndi``); the
    :data:`RATE_STAGES` also get an fps meter.
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        rate_window_s: float = 1.0,
        latency_samples: int = 512,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counters: dict[str, int] = dict.fromkeys(CORE_COUNTERS, 0)
        self._rates: dict[str, RateMeter] = {
            stage: RateMeter(rate_window_s, clock=clock) for stage in RATE_STAGES
        }
        self._latency_samples = latency_samples
        self._latencies: dict[str, LatencyStats] = {"end_to_end": LatencyStats(latency_samples)}
        self._mailboxes: dict[str, _HasCounters] = {}
        self._states: dict[str, Any] = {}
        self._started = clock()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n
        meter = self._rates.get(name)
        if meter is not None:
            now = self._clock()
            for _ in range(n):
                meter.tick(now)

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counters.get(name, 0)

    def rate(self, stage: str) -> float:
        meter = self._rates.get(stage)
        return meter.rate() if meter is not None else 0.0

    def latency(self, name: str = "end_to_end") -> LatencyStats:
        with self._lock:
            stats = self._latencies.get(name)
            if stats is None:
                stats = self._latencies[name] = LatencyStats(self._latency_samples)
            return stats

    def record_latency(self, name: str, seconds: float) -> None:
        self.latency(name).add(seconds)

    def add_mailbox(self, name: str, mailbox: _HasCounters) -> None:
        """Report ``mailbox.counters()`` (put/got/dropped/...) under ``mailboxes.<name>``."""
        with self._lock:
            self._mailboxes[name] = mailbox

    def set_state(self, key: str, value: Any) -> None:
        with self._lock:
            self._states[key] = value

    def state(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._states.get(key, default)

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able dict: counters, fps, latency_ms, mailboxes, states, uptime_s."""
        now = self._clock()
        with self._lock:
            counters = dict(self._counters)
            latencies = dict(self._latencies)
            mailboxes: Mapping[str, _HasCounters] = dict(self._mailboxes)
            states = dict(self._states)
        return {
            "uptime_s": round(now - self._started, 3),
            "counters": counters,
            "fps": {stage: round(m.rate(now), 2) for stage, m in self._rates.items()},
            "latency_ms": {name: stats.snapshot() for name, stats in latencies.items()},
            "mailboxes": {name: box.counters() for name, box in mailboxes.items()},
            "dropped": {name: box.counters().get("dropped", 0) for name, box in mailboxes.items()},
            "states": states,
        }
