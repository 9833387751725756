"""A small hardened HTTP/1.1 server for the daemon's side services (status page, OSCQuery).

A service subclasses :class:`LocalHttpServer` and implements ``route(path, query) -> Response``,
called on the server's worker threads for GET and HEAD (other methods get 405). An exception in
it is logged (throttled) and answered with 500; a client that goes away mid-answer is ignored.
Nothing here prints: per-request lines go to ``logging`` at debug level.

Built so that no client can take the service (or the daemon's file descriptors) down:

* **One I/O thread and a fixed pool of workers**, never a thread per connection. The I/O thread
  accepts and reads request heads without blocking; only a complete head goes to a worker, so an
  idle or slow client costs a file descriptor and no thread.
* **A cap on open connections** (``max_connections``, 64). A new connection over the cap evicts
  the connection that has waited longest without sending a complete request; when every open
  connection is busy being answered, the new one gets a 503 and is closed at once.
* **A request timeout** (``request_timeout``, 5 s): a connection that has not sent a complete
  request head within it (idle keep-alive connections included) is closed; a head over 16 KiB is
  answered 431. Writing an answer gives up after ``write_timeout``.
* **Host check** against DNS rebinding: the ``Host`` header must name the bound port and
  ``localhost``, ``127.0.0.1``, ``[::1]`` or the bound address; on a wildcard bind (``0.0.0.0``)
  any IP literal or this machine's host name (also ``NAME.local``). Otherwise 421 (400 without a
  ``Host``). A web page that resolves its own domain to this machine cannot read the answers.
* **Allow-list** (``allow``, the same entries and meaning as ``osc.allow``): a client whose
  address is not on a non-empty list gets 403.

Every refusal is counted in :attr:`LocalHttpServer.counts`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from bridge.control.server import AllowRule, parse_allow
from bridge.runtime.throttle import LogThrottle

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_WORKERS = 4
DEFAULT_REQUEST_TIMEOUT = 5.0
DEFAULT_WRITE_TIMEOUT = 5.0
MAX_HEAD_BYTES = 16 * 1024
_ACCEPT_BATCH = 256  # connections accepted per wake-up before reading the others again
_TICK = 0.1  # how often the I/O thread looks for expired connections
COUNTERS = ("accepted", "served", "evicted", "refused_busy", "timed_out", "forbidden", "bad_host",
            "bad_request")


@dataclass
class Response:
    code: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class _Conn:
    __slots__ = ("sock", "peer", "buf", "since")

    def __init__(self, sock: socket.socket, peer: Any, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.buf = b""
        self.since = now  # when it began waiting for its next request


class _BadRequest(Exception):
    pass


def _head_end(buf: bytes) -> int:
    """Index just past the blank line that ends a request head, or -1."""
    i = buf.find(b"\r\n\r\n")
    j = buf.find(b"\n\n")
    ends = [k + 4 for k in (i,) if k >= 0] + [k + 2 for k in (j,) if k >= 0]
    return min(ends) if ends else -1


def _peer_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _split_host(value: str) -> tuple[str, str]:
    """``name:port`` / ``[v6]:port`` / ``name`` -> (name, port text)."""
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            return value, ""
        rest = value[close + 1:]
        return value[1:close], rest[1:] if rest.startswith(":") else ""
    name, sep, port = value.rpartition(":")
    return (name, port) if sep else (value, "")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class LocalHttpServer:
    """Binds at construction (a busy port fails then, at start-up), serves on its own threads
    after :meth:`start`. Subclasses answer requests in :meth:`route`."""

    def __init__(self, host: str, port: int, label: str, *, allow: Sequence[str] | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, workers: int = DEFAULT_WORKERS,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 write_timeout: float = DEFAULT_WRITE_TIMEOUT) -> None:
        if max_connections < 1 or workers < 1 or request_timeout <= 0 or write_timeout <= 0:
            raise ValueError("max_connections and workers must be >= 1, the timeouts > 0")
        self.label = label
        self.errors = LogThrottle(10.0)
        self._refusals = LogThrottle(10.0)
        self.allow_rules: list[AllowRule] = [parse_allow(entry) for entry in (allow or [])]  # ValueError
        self.max_connections = int(max_connections)
        self.request_timeout = float(request_timeout)
        self.write_timeout = float(write_timeout)
        self._n_workers = int(workers)
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()  # every open connection, wherever it is
        self._waiting: dict[_Conn, None] = {}  # in the selector, oldest first (I/O thread only)
        self._returned: queue.SimpleQueue[_Conn] = queue.SimpleQueue()  # keep-alive, back from workers
        self._jobs: queue.SimpleQueue[_Conn | None] = queue.SimpleQueue()
        self._closing = False
        self._threads: list[threading.Thread] = []

        if host.startswith("[") and host.endswith("]"):  # [::1] as written in HOST:PORT
            host = host[1:-1]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            if os.name != "nt":  # on Windows SO_REUSEADDR would let two servers share the port
                self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(128)
            self._listener.setblocking(False)
        except OSError:
            self._listener.close()
            raise
        self._bound_host = host
        self._hosts = self._allowed_host_names(host)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")

    # ------------------------------------------------------------------ public
    def route(self, path: str, query: str) -> Response:
        raise NotImplementedError

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self.counts, "open": len(self._conns)}

    def start(self) -> None:
        io = threading.Thread(target=self._io_loop, name=self.label, daemon=True)
        workers = [threading.Thread(target=self._work, name=f"{self.label}-{k}", daemon=True)
                   for k in range(self._n_workers)]
        self._threads = [io, *workers]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._closing = True
        self._wake()
        for _ in range(self._n_workers):
            self._jobs.put(None)
        deadline = time.monotonic() + 2.0
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = list(self._conns)
            self._conns.clear()
        for conn in left:
            _close_quietly(conn.sock)
        for s in (self._listener, self._wake_r, self._wake_w):
            _close_quietly(s)
        try:
            self._sel.close()
        except Exception:  # already closed
            pass

    # ------------------------------------------------------------------ checks
    def _allowed_host_names(self, host: str) -> set[str]:
        bound = self.address[0]
        names = {"localhost", "127.0.0.1", "::1", bound.lower(), host.lower().strip("[]")}
        if bound in ("0.0.0.0", "::") or not ipaddress.ip_address(bound).is_loopback:
            name = socket.gethostname().lower().rstrip(".")
            if name:
                short = name.split(".")[0]
                names |= {name, short, f"{short}.local"}
        names.discard("")
        return names

    def host_ok(self, value: str) -> bool:
        """Whether a ``Host`` header value names this server (see the module docstring)."""
        name, port = _split_host(value.strip().lower())
        if port != str(self.address[1]):
            return False
        name = name.rstrip(".")
        if name in self._hosts:
            return True
        return self.address[0] in ("0.0.0.0", "::") and _is_ip(name)

    def peer_allowed(self, peer: Any) -> bool:
        if not self.allow_rules:
            return True
        ip = _peer_ip(str(peer[0]))
        return ip is not None and any(rule.matches(ip, int(peer[1])) for rule in self.allow_rules)

    def _count(self, key: str, peer: Any = None, why: str = "") -> None:
        with self._lock:
            self.counts[key] += 1
        if why and self._refusals.hit() is not None:
            log.warning("%s: %s from %s (%s); further refusals are counted, logged at most every 10 s",
                        self.label, why, peer[0] if peer else "?", key)

    # ------------------------------------------------------------------ I/O thread
    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    def _io_loop(self) -> None:
        next_sweep = time.monotonic() + _TICK
        while not self._closing:
            try:
                events = self._sel.select(_TICK)
            except OSError:  # pragma: no cover - the selector was closed under us
                break
            for key, _ in events:
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                else:
                    self._read(key.data)
            while True:
                try:
                    conn = self._returned.get_nowait()
                except queue.Empty:
                    break
                self._wait_for_request(conn)
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + _TICK
                self._expire(now)

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, ...: the backlog keeps them
                if self.errors.hit() is not None:
                    log.warning("%s: accept failed: %s", self.label, exc)
                return
            sock.setblocking(False)
            self._count("accepted")
            with self._lock:
                full = len(self._conns) >= self.max_connections
            if full:
                victim = next(iter(self._waiting), None)
                if victim is None:
                    self._count("refused_busy", peer, "too many connections, every one busy")
                    _send_quietly(sock, _plain(HTTPStatus.SERVICE_UNAVAILABLE, b"busy, try again\n"))
                    _close_quietly(sock)
                    continue
                self._count("evicted", peer, f"{self.max_connections} connections open: closed the one "
                            "waiting longest for a request")
                self._drop(victim)
            conn = _Conn(sock, peer, time.monotonic())
            with self._lock:
                self._conns.add(conn)
            self._wait_for_request(conn)

    def _wait_for_request(self, conn: _Conn) -> None:
        if self._closing:
            self._drop(conn)
            return
        conn.since = time.monotonic()
        try:
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError):
            self._drop(conn)
            return
        self._waiting[conn] = None

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)
            return
        conn.buf += data
        if _head_end(conn.buf) >= 0:
            self._unwatch(conn)
            self._jobs.put(conn)
        elif len(conn.buf) > MAX_HEAD_BYTES:
            self._count("bad_request", conn.peer, "request head over 16 KiB")
            self._unwatch(conn)
            _send_quietly(conn.sock, _plain(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"request head too large\n"))
            self._close(conn)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._waiting if now - c.since > self.request_timeout]:
            self._count("timed_out")
            self._drop(conn)

    def _unwatch(self, conn: _Conn) -> None:
        self._waiting.pop(conn, None)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _drop(self, conn: _Conn) -> None:
        self._unwatch(conn)
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)
        _close_quietly(conn.sock)

    # ------------------------------------------------------------------ workers
    def _work(self) -> None:
        while True:
            conn = self._jobs.get()
            if conn is None:
                return
            keep = False
            try:
                keep = self._serve(conn)
            except OSError:
                pass  # the client went away or stopped reading
            except Exception:
                if self.errors.hit() is not None:
                    log.warning("%s: request from %s failed", self.label, conn.peer, exc_info=True)
            if not keep or self._closing:
                self._close(conn)
                continue
            try:
                conn.sock.setblocking(False)
            except OSError:
                self._close(conn)
                continue
            if _head_end(conn.buf) >= 0:
                self._jobs.put(conn)  # a pipelined request already arrived
            else:
                self._returned.put(conn)
                self._wake()

    def _serve(self, conn: _Conn) -> bool:
        """Answer the request at the start of ``conn.buf``; True to keep the connection."""
        end = _head_end(conn.buf)
        head, conn.buf = conn.buf[:end], conn.buf[end:]
        conn.sock.settimeout(self.write_timeout)
        try:
            method, target, version, headers = _parse_head(head)
        except _BadRequest as exc:
            self._count("bad_request", conn.peer, "malformed request")
            self._write(conn, "?", "?", _plain(HTTPStatus.BAD_REQUEST, f"{exc}\n".encode()), keep=False)
            return False
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        has_body = "transfer-encoding" in headers or headers.get("content-length", "0") != "0"
        if has_body:
            keep = False  # nothing here reads a body: never parse one as the next request
        if not self.peer_allowed(conn.peer):
            self._count("forbidden", conn.peer, "refused a client not in osc.allow")
            response = _plain(HTTPStatus.FORBIDDEN, f"{conn.peer[0]} is not in osc.allow\n".encode())
            return self._write(conn, method, target, response, keep=False)
        host = headers.get("host")
        if host is None:
            self._count("bad_host", conn.peer, "refused a request without a Host header")
            return self._write(conn, method, target, _plain(HTTPStatus.BAD_REQUEST, b"Host header required\n"),
                               keep=False)
        if not self.host_ok(host):
            self._count("bad_host", conn.peer, f"refused Host {host[:80]!r}")
            return self._write(conn, method, target, _plain(HTTPStatus.MISDIRECTED_REQUEST,
                                                            b"wrong Host: use the address this server listens on\n"),
                               keep=False)
        if method not in ("GET", "HEAD"):
            response = Response(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD\n", headers={"Allow": "GET, HEAD"})
            return self._write(conn, method, target, response, keep=keep, head=False)
        path, _, query = target.partition("?")
        try:
            response = self.route(path, query)
        except Exception:
            if self.errors.hit() is not None:
                log.warning("%s: %s failed", self.label, target[:200], exc_info=True)
            response = Response(HTTPStatus.INTERNAL_SERVER_ERROR, b"error (see the daemon log)\n")
        self._count("served")
        return self._write(conn, method, target, response, keep=keep, head=method == "HEAD")

    def _write(self, conn: _Conn, method: str, target: str, response: Response, *, keep: bool,
               head: bool = False) -> bool:
        code = int(response.code)
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = ""
        lines = [f"HTTP/1.1 {code} {phrase}", "Server: StreamBridge", "Cache-Control: no-store",
                 "X-Content-Type-Options: nosniff"]
        if code != HTTPStatus.NO_CONTENT:
            lines += [f"Content-Type: {response.content_type}", f"Content-Length: {len(response.body)}"]
        lines += [f"{k}: {v}" for k, v in response.headers.items()]
        if not keep:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not head and code != HTTPStatus.NO_CONTENT:
            data += response.body
        conn.sock.sendall(data)
        log.debug('%s: %s "%s %s" %d', self.label, conn.peer[0], method, target[:200], code)
        return keep


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    text = head.decode("latin-1")
    lines = text.replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
        raise _BadRequest("bad request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest("only HTTP/1.0 and 1.1")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise _BadRequest("bad header line")
        key = name.lower()
        if key in headers and key in ("host", "content-length", "transfer-encoding"):
            raise _BadRequest(f"duplicate {name} header")
        headers[key] = value.strip()
    return method, target, version, headers


def _plain(code: int, body: bytes) -> Response:
    return Response(code, body)


def _send_quietly(sock: socket.socket, response: Response) -> None:
    """Best effort, never blocks: a short answer to a connection about to be closed."""
    phrase = HTTPStatus(response.code).phrase
    head = (f"HTTP/1.1 {int(response.code)} {phrase}\r\nContent-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\nConnection: close\r\n\r\n")
    try:
        sock.send(head.encode("latin-1") + response.body)
    except OSError:
        pass


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
