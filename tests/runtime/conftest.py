"""Fakes shared by the runtime tests: a manual clock, scripted sources and recording sinks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pytest

from bridge.io.base import Frame, FrameSink, FrameSource, PixelFormat


class FakeClock:
    """A clock that only moves when told to (``advance`` or ``sleep``)."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt

    def sleep(self, dt: float) -> None:
        self.sleeps.append(dt)
        self.now += max(dt, 1e-4)


def bgra_frame(seq: int = 0, w: int = 64, h: int = 48, t_capture: float = 0.0) -> Frame:
    data = np.empty((h, w, 4), dtype=np.uint8)
    data[:] = (10, 20, (seq * 7) % 256, 255)
    return Frame(data, PixelFormat.BGRA, seq=seq, t_capture=t_capture)


@dataclass
class ScriptedSource(FrameSource):
    """A source whose ``read`` replays a script.

    Script items: a :class:`Frame` (returned after ``frame_dt`` of clock time), ``None`` (no frame:
    ``timeout`` of clock time passes) or an exception instance (raised). After the script, reads
    time out silently, or repeat the last item forever when ``repeat_last``.
    """

    script: list[object]
    clock: FakeClock | None = None
    frame_dt: float = 1 / 60
    repeat_last: bool = False
    nominal: float | None = None
    kind: str = "scripted"
    opened: int = 0
    closed: int = 0
    reads: int = 0
    threads: set[int] = field(default_factory=set)

    def _touch(self) -> None:
        self.threads.add(threading.get_ident())

    def open(self) -> None:
        self._touch()
        self.opened += 1

    def read(self, timeout: float) -> Frame | None:
        self._touch()
        self.reads += 1
        item: object = None
        if self.script:
            if self.repeat_last and len(self.script) == 1:
                item = self.script[0]
            else:
                item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Frame):
            if self.clock is not None:
                self.clock.advance(self.frame_dt)
                item.t_capture = self.clock.now
            return item
        if self.clock is not None:
            self.clock.advance(timeout)
        return None

    def close(self) -> None:
        self._touch()
        self.closed += 1

    @property
    def nominal_fps(self) -> float | None:
        return self.nominal


class SourceFactory:
    """``make_source`` for the worker: each call hands out the next session (a source, or an
    exception to raise)."""

    def __init__(self, sessions: Iterable[ScriptedSource | BaseException], clock: FakeClock | None):
        self.sessions = list(sessions)
        self.clock = clock
        self.calls: list[float] = []
        self.made: list[ScriptedSource] = []
        self.threads: set[int] = set()

    def __call__(self) -> ScriptedSource:
        self.threads.add(threading.get_ident())
        self.calls.append(self.clock.now if self.clock is not None else 0.0)
        item = self.sessions.pop(0) if len(self.sessions) > 1 else self.sessions[0]
        if isinstance(item, BaseException):
            raise item
        self.made.append(item)
        return item


class RecordingSink(FrameSink):
    """Records what it is sent (and when, by ``clock``); can be told to fail."""

    kind = "recording"

    def __init__(
        self,
        clock: Callable[[], float] | None = None,
        fail_send: Callable[[int], bool] | None = None,
        fail_open: Callable[[int], bool] | None = None,
    ) -> None:
        self.clock = clock
        self.fail_send = fail_send or (lambda n: False)
        self.fail_open = fail_open or (lambda n: False)
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self.opens: list[tuple[int, int, float]] = []
        self.open_times: list[float] = []
        self.closes = 0
        self.send_calls = 0
        self.open_calls = 0
        self.keep_frames = True

    def open(self, width: int, height: int, fps: float) -> None:
        self.open_calls += 1
        if self.clock is not None:
            self.open_times.append(self.clock())
        if self.fail_open(self.open_calls):
            raise ConnectionError("cannot open")
        self.opens.append((width, height, fps))

    def send(self, rgb: np.ndarray) -> None:
        self.send_calls += 1
        if self.fail_send(self.send_calls):
            raise RuntimeError("send broke")
        if self.keep_frames:
            self.frames.append(rgb)
        if self.clock is not None:
            self.times.append(self.clock())

    def close(self) -> None:
        self.closes += 1


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
