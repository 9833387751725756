"""The side services' HTTP server under hostile clients: real sockets on loopback."""

from __future__ import annotations

import http.client
import os
import resource
import socket
import threading
import time
from http import HTTPStatus

import pytest

from bridge.httpserver import LocalHttpServer, Response
from tests.daemon.conftest import wait_until


class Hello(LocalHttpServer):
    def __init__(self, host: str = "127.0.0.1", **kw) -> None:
        self.gate: threading.Event | None = None
        self.entered = threading.Semaphore(0)
        super().__init__(host, 0, "test-http", **kw)

    def route(self, path: str, query: str) -> Response:
        if path == "/slow" and self.gate is not None:
            self.entered.release()
            self.gate.wait(10)
        return Response(HTTPStatus.OK, b"hello\n")


@pytest.fixture
def make_server():
    made: list[Hello] = []

    def make(**kw) -> Hello:
        s = Hello(**kw)
        s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        if s.gate is not None:
            s.gate.set()
        s.stop()


def _get(port: int, path: str = "/", host: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if host is None:
            conn.request("GET", path)
        else:
            conn.putrequest("GET", path, skip_host=True)
            conn.putheader("Host", host)
            conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _server_threads(label: str = "test-http") -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(label))


def _idle_connections(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(True)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def _fd_room(wanted: int) -> int:
    """Raise the soft file limit towards ``wanted`` + headroom if allowed; return what fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + 256
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return wanted if soft == resource.RLIM_INFINITY else min(wanted, soft - 256)


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def test_a_thousand_idle_connections_leave_it_answering(make_server):
    server = make_server(max_connections=64, request_timeout=60.0)  # idle ones never time out here
    port = server.address[1]
    threads = threading.active_count()
    n = _fd_room(1000)
    assert n >= 500, "the file limit leaves too little room for this test"
    fds = _open_fds()
    socks = _idle_connections(port, n)
    try:
        t0 = time.monotonic()
        assert _get(port) == (200, b"hello\n")  # accepted after every idle one before it
        assert time.monotonic() - t0 < 1.0
        assert threading.active_count() == threads  # a fixed pool: no thread per connection
        if fds is not None:  # the server holds at most 64 of them: the oldest idle ones were evicted
            assert _open_fds() - fds - n <= 64
        assert server.open_connections <= 64 and server.counts["evicted"] >= n - 64
    finally:
        for s in socks:
            s.close()


def test_idle_and_half_sent_requests_time_out(make_server):
    server = make_server(request_timeout=0.3)
    port = server.address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as idle, \
            socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        assert idle.recv(100) == b""  # closed by the server, well before the client's 5 s
        assert slow.recv(100) == b""
    assert server.counts["timed_out"] == 2 and server.open_connections == 0


def test_keep_alive_and_its_idle_timeout(make_server):
    server = make_server(request_timeout=0.5)
    port = server.address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(3):
        conn.request("GET", "/")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"hello\n"
    assert server.counts["served"] == 3 and server.counts["accepted"] == 1  # one connection
    assert wait_until(lambda: server.open_connections == 0, 3)  # then the idle one is closed
    conn.close()


def test_when_every_connection_is_busy_a_new_one_gets_503(make_server):
    server = make_server(max_connections=3, workers=3)
    server.gate = threading.Event()
    port = server.address[1]
    busy = [threading.Thread(target=_get, args=(port, "/slow"), daemon=True) for _ in range(3)]
    for t in busy:
        t.start()
    for _ in range(3):
        assert server.entered.acquire(timeout=5)
    threads = _server_threads()
    answer = _raw(port, b"", timeout=5)
    assert answer.startswith(b"HTTP/1.1 503") or answer == b""
    assert server.counts["refused_busy"] == 1 and _server_threads() == threads
    server.gate.set()
    for t in busy:
        t.join(5)
    assert server.counts["served"] == 3
    assert wait_until(lambda: server.open_connections == 0, 5)  # the clients closed theirs
    assert _get(port) == (200, b"hello\n")


def test_host_header_must_name_this_server(make_server):
    server = make_server()
    port = server.address[1]
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        assert _get(port, host=good)[0] == 200, good
    for bad in (f"evil.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1", f"localhost.evil.example:{port}",
                f"10.1.2.3:{port}"):
        assert _get(port, host=bad)[0] == 421, bad
    assert server.counts["bad_host"] == 5
    answer = _raw(port, b"GET / HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"Host header required" in answer


def test_wildcard_bind_accepts_ip_literals_but_not_names(make_server):
    server = make_server(host="0.0.0.0")
    port = server.address[1]
    assert _get(port, host=f"192.168.1.20:{port}")[0] == 200
    assert _get(port, host=f"{socket.gethostname()}:{port}")[0] == 200
    assert _get(port, host=f"attacker.example:{port}")[0] == 421


def test_allow_list_refuses_other_clients(make_server):
    refusing = make_server(allow=["10.0.0.0/8", "192.168.1.20"])
    assert _get(refusing.address[1]) == (403, b"127.0.0.1 is not in osc.allow\n")
    assert refusing.counts["forbidden"] == 1 and refusing.counts["served"] == 0
    allowing = make_server(allow=["127.0.0.0/8"])
    assert _get(allowing.address[1]) == (200, b"hello\n")
    with pytest.raises(ValueError, match="allow-list entry"):
        Hello(allow=["my-laptop"])


def test_malformed_and_oversized_requests(make_server):
    server = make_server()
    port = server.address[1]
    assert _raw(port, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _raw(port, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400")
    big = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX: " % port + b"a" * 20000
    assert _raw(port, big).startswith(b"HTTP/1.1 431")
    post = b"POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 3\r\n\r\nabc" % port
    answer = _raw(port, post)
    assert answer.startswith(b"HTTP/1.1 405") and b"Connection: close" in answer
    assert _get(port) == (200, b"hello\n")  # and it still answers


def test_ipv6_loopback(make_server):
    try:
        server = make_server(host="[::1]")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    port = server.address[1]
    assert server.url == f"http://[::1]:{port}/"
    conn = http.client.HTTPConnection("::1", port, timeout=5)
    try:
        conn.request("GET", "/")  # http.client sends Host: [::1]:PORT
        assert conn.getresponse().status == 200
    finally:
        conn.close()
