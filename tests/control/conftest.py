"""Shared fixtures: a real OscServer on a loopback port, a python-osc client, a feedback listener."""

from __future__ import annotations

import queue
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pythonosc.osc_message import OscMessage as PyOscMessage
from pythonosc.udp_client import SimpleUDPClient

from bridge.control.isolated import IsolatedOscServer
from bridge.control.server import OscServer
from bridge.control.surface import Command, ControlSurface


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.001)
    return predicate()


def handled(stats: dict[str, int]) -> int:
    """Datagrams whose outcome is counted (``received`` is counted before the outcome)."""
    return stats["accepted"] + stats["rejected"] + stats["malformed"] + stats["ignored"]


#: the two receivers behind one interface: on a thread of this process, and in a child process
SERVER_KINDS: dict[str, type[OscServer] | type[IsolatedOscServer]] = {
    "thread": OscServer, "process": IsolatedOscServer,
}


@pytest.fixture(params=list(SERVER_KINDS))
def server_cls(request: pytest.FixtureRequest) -> type[OscServer] | type[IsolatedOscServer]:
    return SERVER_KINDS[request.param]


@pytest.fixture(params=list(SERVER_KINDS))
def server_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Harness:
    server: OscServer | IsolatedOscServer
    client: SimpleUDPClient
    raw: socket.socket  # for hand-made datagrams
    batches: queue.Queue[list[Command]] = field(default_factory=queue.Queue)
    errors: queue.Queue[tuple[str, str]] = field(default_factory=queue.Queue)

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.port)

    def send(self, address: str, *args: Any) -> None:
        self.client.send_message(address, list(args))

    def send_raw(self, data: bytes) -> None:
        self.raw.sendto(data, self.addr)

    def batch(self, timeout: float = 2.0) -> list[Command]:
        return self.batches.get(timeout=timeout)

    def error(self, timeout: float = 2.0) -> tuple[str, str]:
        return self.errors.get(timeout=timeout)

    def settle(self, received: int, timeout: float = 2.0) -> dict[str, int]:
        """Wait until the server has fully handled ``received`` datagrams; return its counters."""
        assert wait_until(lambda: handled(self.server.stats()) >= received, timeout), (
            self.server.stats()
        )
        return self.server.stats()


def make_harness(
    allow: list[str] | None = None,
    surface: ControlSurface | None = None,
    on_error: Callable[[str, str], None] | None = None,
    kind: str = "thread",
) -> Harness:
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    h = Harness(server=None, client=None, raw=raw)  # type: ignore[arg-type]

    def errors(address: str, reason: str) -> None:
        h.errors.put((address, reason))
        if on_error is not None:
            on_error(address, reason)

    h.server = SERVER_KINDS[kind]("127.0.0.1", 0, h.batches.put, errors, allow, surface=surface)
    h.server.start()
    h.client = SimpleUDPClient("127.0.0.1", h.server.port)
    return h


def close_harness(h: Harness) -> None:
    h.server.stop()
    h.raw.close()
    h.client._sock.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    """The receiver on a thread (the per-address cases: the child process runs the same code)."""
    h = make_harness()
    yield h
    close_harness(h)


@pytest.fixture(params=list(SERVER_KINDS))
def any_harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """Each receiver in turn: on a thread, and in a child process."""
    h = make_harness(kind=request.param)
    yield h
    close_harness(h)


class Listener:
    """A real UDP socket standing in for TouchOSC / TouchDesigner's OSC In."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2.0)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def recv(self, timeout: float = 2.0) -> PyOscMessage:
        self.sock.settimeout(timeout)
        data, _ = self.sock.recvfrom(65536)
        return PyOscMessage(data)

    def recv_all(self, quiet: float = 0.2) -> list[PyOscMessage]:
        """Everything that arrives until nothing has come for ``quiet`` seconds."""
        out = []
        while True:
            try:
                out.append(self.recv(quiet))
            except TimeoutError:
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()
