"""One sink on its own worker thread, fed through a latest-wins mailbox.

The publisher's clock only hands each frame to every sink's mailbox (:meth:`SinkWorker.offer`,
never blocking); each worker sends the newest frame it has to its sink. A slow sink therefore
drops frames (counted) instead of delaying the clock or the other sinks, and a failing sink is
closed and re-opened with backoff on its own thread, off the output clock. Every call into the
sink backend (factory, ``open``, ``send``, ``close``, ``describe``) happens on that one thread.

``threaded=False`` runs the same logic inline: :meth:`offer` sends at once on the caller's thread
(deterministic tests on a manual clock).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import numpy as np

from bridge.io.base import FrameSink
from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import Metrics
from bridge.runtime.throttle import LogThrottle

logger = logging.getLogger("bridge.runtime.publisher")


def _describe_exc(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SinkWorker:
    """Owns one sink (an object, or a factory called again after every failure)."""

    def __init__(
        self,
        index: int,
        sink: FrameSink | None,
        factory: Callable[[], FrameSink] | None,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 5.0,
        threaded: bool = True,
        owner: str = "publisher",
    ) -> None:
        self.index = index
        self.sink = sink
        self.factory = factory
        self._metrics = metrics
        self._clock = clock
        self._backoff_initial = float(backoff_initial_s)
        self._backoff_max = float(backoff_max_s)
        self.backoff = self._backoff_initial
        self.log = LogThrottle(10.0, clock)
        self.name = f"{index}"
        self.owner = owner
        self.threaded = threaded
        self.is_open = False
        self.size: tuple[int, int] | None = None
        self.retry_at = -math.inf
        self.errors = 0
        self.sends = 0
        self.skipped = 0  # frames not sent while waiting to re-open
        self.state = "idle"
        self.last_error = ""
        self._box: LatestMailbox[tuple[np.ndarray, float]] = LatestMailbox(1, name=f"sink {index}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- publisher side ----------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Frames replaced in the mailbox by a newer one before the sink took them."""
        return self._box.counters()["dropped"]

    def offer(self, frame: np.ndarray, fps: float) -> bool:
        """Hand over a frame (never blocks when threaded). Inline: send it now; returns whether it
        was delivered. Threaded: returns whether the sink is open."""
        if not self.threaded:
            return self._deliver(frame, fps, self._clock())
        if self._thread is None:
            self.start()
        self._box.put((frame, fps))
        return self.is_open

    def start(self) -> None:
        if self._thread is None and self.threaded:
            self._thread = threading.Thread(
                target=self._run, name=f"sink-{self.index}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 0.5) -> bool:
        """Send what is pending, close the sink (on its thread) and end. False if the thread did
        not end within ``timeout`` (stuck in a sink call; it is left to end on its own)."""
        self._stop.set()
        self._box.close()
        thread = self._thread
        if thread is None:
            if self.is_open:
                self.close()
            return True
        thread.join(timeout)
        if thread.is_alive():
            logger.warning(
                "%s: sink %s still inside a sink call after %.2f s; leaving it",
                self.owner, self.name, timeout,
            )
            return False
        return True

    def stats(self) -> dict[str, object]:
        return {
            "name": self.name,
            "open": self.is_open,
            "state": self.state,
            "sends": self.sends,
            "dropped": self.dropped,
            "errors": self.errors,
            "last_error": self.last_error,
        }

    # -- sink thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                item = self._box.get(timeout=0.1)
                if item is None:
                    if self._stop.is_set():
                        break
                    continue
                frame, fps = item
                try:
                    self._deliver(frame, fps, self._clock())
                except Exception:  # a bug here: never end the thread
                    logger.exception("%s: sink %s: unexpected error", self.owner, self.name)
        finally:
            if self.is_open:
                self.close()

    def _deliver(self, frame: np.ndarray, fps: float, now: float) -> bool:
        size = (int(frame.shape[1]), int(frame.shape[0]))
        if not self._ensure_open(size, fps, now):
            self.skipped += 1
            return False
        assert self.sink is not None
        try:
            self.sink.send(frame)
        except Exception as exc:
            self._failed(now, "send", exc)
            return False
        self.sends += 1
        if self.log.burst:
            errors = self.log.reset()
            logger.info("%s: sink %s works again after %d errors", self.owner, self.name, errors)
        self.backoff = self._backoff_initial
        return True

    def _ensure_open(self, size: tuple[int, int], fps: float, now: float) -> bool:
        if self.is_open and self.size == size:
            return True
        if now < self.retry_at:
            return False
        if self.is_open:  # output size changed: re-open at the new size
            logger.info("%s: sink %s re-opening at %dx%d", self.owner, self.name, *size)
            self.close()
        try:
            if self.sink is None:
                assert self.factory is not None
                self.sink = self.factory()
            self.sink.open(size[0], size[1], fps)
        except Exception as exc:
            self._failed(now, "open", exc)
            return False
        self.is_open = True
        self.state = "open"
        self.size = size
        try:
            self.name = f"{self.index}:{self.sink.describe() or type(self.sink).__name__}"
        except Exception:
            self.name = f"{self.index}:{type(self.sink).__name__}"
        logger.debug("%s: sink %s open at %dx%d @ %.3g fps", self.owner, self.name, *size, fps)
        return True

    def _failed(self, now: float, what: str, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{what}: {_describe_exc(exc)}"
        self._metrics.count("sink_errors")
        self._metrics.count(f"sink_errors:{self.name}")
        delay = self.backoff
        self.retry_at = now + delay
        self.backoff = min(self.backoff * 2.0, self._backoff_max)
        suppressed = self.log.hit(now)
        if suppressed is not None:
            logger.warning(
                "%s: sink %s %s failed: %s; re-opening in %.2f s%s",
                self.owner,
                self.name,
                what,
                _describe_exc(exc),
                delay,
                f" ({suppressed} more errors since the last report)" if suppressed else "",
                exc_info=self.log.burst == 1,
            )
        self.close()
        self.state = "retrying"

    def close(self) -> None:
        sink = self.sink
        was_open = self.is_open
        self.is_open = False
        self.size = None
        if self.state == "open":
            self.state = "closed"
        if sink is None:
            return
        try:
            sink.close()
        except Exception as exc:
            if was_open:
                logger.debug("%s: sink %s close failed: %s", self.owner, self.name, _describe_exc(exc))
        if self.factory is not None:
            self.sink = None
