"""Why a source is not delivering, in words a user sees: the status page, ``/sd/status/source_error``
and one WARNING per change of reason (not one per retry).

:class:`ReportingSource` wraps the backend the source worker creates for each attempt and tells an
:class:`OpenErrorReport` about every failure (the factory, ``open`` or ``read`` raising) and about
the first frame after one. Reasons are compared as text, so backends keep run-to-run details
(timings, object addresses) out of their messages.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from bridge.io.base import Frame, FrameSource

log = logging.getLogger("streambridge.source")


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


class OpenErrorReport:
    """The current reason (``""``: none). Thread-safe; ``on_change(reason)`` runs on the caller's
    thread (the source worker) once per change."""

    def __init__(self, name: str, on_change: Callable[[str], None] | None = None) -> None:
        self.name = name
        self._on_change = on_change
        self._lock = threading.Lock()
        self._reason = ""
        self._closed = False

    @property
    def reason(self) -> str:
        return self._reason

    def failed(self, reason: str) -> None:
        with self._lock:
            if self._closed or reason == self._reason:
                return
            self._reason = reason
        log.warning("source %s cannot deliver: %s", self.name, reason)
        self._notify(reason)

    def ok(self) -> None:
        with self._lock:
            if not self._reason:
                return
            was, self._reason = self._reason, ""
        log.info("source %s delivers frames again (was: %s)", self.name, was)
        self._notify("")

    def close(self) -> None:
        """Stopping: failures caused by the stop itself are not reported."""
        with self._lock:
            self._closed = True

    def _notify(self, reason: str) -> None:
        if self._on_change is not None:
            try:
                self._on_change(reason)
            except Exception:
                log.exception("source %s: error report callback failed", self.name)


class ReportingSource(FrameSource):
    """A source that reports its failures to ``report`` and otherwise behaves as ``inner``."""

    def __init__(self, inner: FrameSource, report: OpenErrorReport) -> None:
        self.inner = inner
        self.kind = inner.kind
        self._report = report

    @classmethod
    def factory(cls, make: Callable[[], FrameSource], report: OpenErrorReport) -> Callable[[], FrameSource]:
        def build() -> FrameSource:
            try:
                return cls(make(), report)
            except Exception as exc:
                report.failed(describe_error(exc))
                raise

        return build

    def open(self) -> None:
        try:
            self.inner.open()
        except Exception as exc:
            self._report.failed(describe_error(exc))
            raise

    def read(self, timeout: float) -> Frame | None:
        try:
            frame = self.inner.read(timeout)
        except Exception as exc:
            self._report.failed(describe_error(exc))
            raise
        if frame is not None:
            self._report.ok()
        return frame

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> str:
        return self.inner.describe()

    @property
    def nominal_fps(self) -> float | None:
        return self.inner.nominal_fps
