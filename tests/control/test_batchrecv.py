"""Batched datagram reads (recvmmsg on Linux) against the portable one-per-call loop, real UDP."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from bridge.control.batchrecv import LoopReceiver, MultiReceiver, make_receiver
from bridge.control.server import OscServer

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="recvmmsg is Linux only")


def _pair(family: int, host: str) -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(family, socket.SOCK_DGRAM)
    rx.bind((host, 0))
    rx.setblocking(False)
    tx = socket.socket(family, socket.SOCK_DGRAM)
    tx.bind((host, 0))
    return rx, tx


def _drain(receiver) -> list:
    out = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        got = receiver.receive()
        out += got
        if not got:
            if out:
                return out
            time.sleep(0.01)
    return out


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@linux
@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")], ids=["ipv4", "ipv6"])
def test_batched_reads_give_what_one_per_call_reads_give(family, host):
    if family == socket.AF_INET6 and not _has_ipv6():
        pytest.skip("no IPv6 loopback")
    size = 64
    datagrams = [bytes([i]) * (1 + (i * 13) % 100) for i in range(40)]  # some longer than size
    results = []
    for cls in (MultiReceiver, LoopReceiver):
        rx, tx = _pair(family, host)
        with rx, tx:
            receiver = cls(rx, size, batch=16)
            assert receiver.receive() == []  # nothing waiting: at once, no error
            for d in datagrams:
                tx.sendto(d, rx.getsockname())
            got = _drain(receiver)
            sender = tx.getsockname()
        assert [peer for _, peer in got] == [sender] * len(datagrams)
        results.append([data for data, _ in got])
    multi, loop = results
    assert multi == loop == [d[:size] for d in datagrams]  # in order, cut to size like recvfrom_into


@linux
def test_a_burst_is_read_with_one_system_call_per_batch():
    rx, tx = _pair(socket.AF_INET, "127.0.0.1")
    with rx, tx:
        receiver = MultiReceiver(rx, 128, batch=16)
        calls = []
        real = receiver._fn

        def counting(*args):
            calls.append(args[2])
            return real(*args)

        receiver._fn = counting
        for i in range(40):
            tx.sendto(b"x" * (i + 1), rx.getsockname())
        time.sleep(0.05)
        sizes = [len(receiver.receive()) for _ in range(3)]
    assert sizes == [16, 16, 8] and len(calls) == 3


@linux
def test_the_osc_server_reads_bursts_with_recvmmsg_here_and_the_loop_elsewhere(monkeypatch):
    got = []
    with OscServer("127.0.0.1", 0, on_batch=got.append) as server:
        assert server.receive_kind == "recvmmsg"
    monkeypatch.setattr("bridge.control.batchrecv.MultiReceiver", _unavailable)
    rx, _ = _pair(socket.AF_INET, "127.0.0.1")
    with rx:
        assert isinstance(make_receiver(rx, 64), LoopReceiver)


def _unavailable(*_args, **_kwargs):
    raise OSError("recvmmsg is Linux only")
