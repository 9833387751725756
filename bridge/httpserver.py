"""A small hardened HTTP/1.1 server for the daemon's side services (status page, OSCQuery).

A service subclasses :class:`LocalHttpServer` and implements ``route(path, query) -> Response``,
called on the server's worker threads for GET and HEAD. A service that takes changes also
implements ``post(path, query, headers, body)``; without it POST (and every other method) gets
405. An exception in either is logged (throttled) and answered with 500; a client that goes away
mid-answer is ignored. Nothing here prints: per-request lines go to ``logging`` at debug level.

A request body (``Content-Length`` only, at most 64 KiB; chunked bodies get 411, larger ones 413)
is gathered by the I/O thread together with the head, under the same request timeout, so a
client that sends its body slowly holds a file descriptor, never a worker.

A route may answer with ``Response(stream=EventStreams)``: the worker writes the head of a
``text/event-stream`` answer and hands the connection to that :class:`EventStreams`, whose one
thread writes the events to every such client (server-sent events). A stream still counts
towards the connection cap; :class:`EventStreams` caps how many there may be (503 beyond it).

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
MAX_BODY_BYTES = 64 * 1024
_ACCEPT_BATCH = 256  # connections accepted per wake-up before reading the others again
_TICK = 0.1  # how often the I/O thread looks for expired connections
COUNTERS = ("accepted", "served", "evicted", "refused_busy", "timed_out", "forbidden", "bad_host",
            "bad_request", "streams")


@dataclass
class Response:
    code: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    #: answer with a server-sent-event stream kept open by these streams (``body`` is sent first)
    stream: EventStreams | None = None


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


def _body_length(head: bytes) -> int:
    """The ``Content-Length`` a request head announces (0 without one); -1 when it cannot be
    read here (a malformed or chunked head: the worker answers it, with no body to wait for)."""
    length = 0
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"transfer-encoding":
            return -1
        if sep and key == b"content-length":
            text = value.strip()
            if not text.isdigit() or len(text) > 12:
                return -1
            length = int(text)
    return length if length <= MAX_BODY_BYTES else -1


def _request_ready(buf: bytes) -> bool:
    """Whether ``buf`` starts with a whole request: its head and the body the head announces."""
    end = _head_end(buf)
    if end < 0:
        return False
    length = _body_length(buf[:end])
    return length < 0 or len(buf) - end >= length


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

    def post(self, path: str, query: str, headers: dict[str, str], body: bytes) -> Response | None:
        """Answer a POST (``headers`` keys are lower case). None (the default): this service
        takes no POST, answered with 405."""
        return None

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
        if _request_ready(conn.buf):
            self._unwatch(conn)
            self._jobs.put(conn)
        elif _head_end(conn.buf) >= 0:
            pass  # the body is on its way (at most MAX_BODY_BYTES, within the request timeout)
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
            keep: bool | None = False
            try:
                keep = self._serve(conn)
            except OSError:
                pass  # the client went away or stopped reading
            except Exception:
                if self.errors.hit() is not None:
                    log.warning("%s: request from %s failed", self.label, conn.peer, exc_info=True)
            if keep is None:
                continue  # handed to an event stream, which closes it
            if not keep or self._closing:
                self._close(conn)
                continue
            try:
                conn.sock.setblocking(False)
            except OSError:
                self._close(conn)
                continue
            if _request_ready(conn.buf):
                self._jobs.put(conn)  # a pipelined request already arrived
            else:
                self._returned.put(conn)
                self._wake()

    def _serve(self, conn: _Conn) -> bool | None:
        """Answer the request at the start of ``conn.buf``; True to keep the connection, None
        when it was handed to an event stream."""
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
        body = b""
        if "transfer-encoding" in headers:
            self._count("bad_request", conn.peer, "chunked request body")
            return self._write(conn, method, target, _plain(HTTPStatus.LENGTH_REQUIRED, b"send a Content-Length\n"),
                               keep=False)
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit() or len(length_text) > 12:
            self._count("bad_request", conn.peer, "bad Content-Length")
            return self._write(conn, method, target, _plain(HTTPStatus.BAD_REQUEST, b"bad Content-Length\n"),
                               keep=False)
        if int(length_text) > MAX_BODY_BYTES:
            self._count("bad_request", conn.peer, "request body over 64 KiB")
            return self._write(conn, method, target, _plain(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                                            b"request body too large\n"), keep=False)
        if int(length_text):
            length = int(length_text)
            body, conn.buf = conn.buf[:length], conn.buf[length:]
        path, _, query = target.partition("?")
        not_allowed = Response(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD\n", headers={"Allow": "GET, HEAD"})
        if method not in ("GET", "HEAD", "POST"):
            return self._write(conn, method, target, not_allowed, keep=False, head=False)
        try:
            if method == "POST":
                posted = self.post(path, query, headers, body)
                if posted is None:
                    return self._write(conn, method, target, not_allowed, keep=False, head=False)
                response = posted
            else:
                response = self.route(path, query)
        except Exception:
            if self.errors.hit() is not None:
                log.warning("%s: %s failed", self.label, target[:200], exc_info=True)
            response = Response(HTTPStatus.INTERNAL_SERVER_ERROR, b"error (see the daemon log)\n")
        self._count("served")
        if response.stream is not None and method == "GET" and int(response.code) == HTTPStatus.OK:
            return self._hand_to_stream(conn, target, response)
        return self._write(conn, method, target, response, keep=keep, head=method == "HEAD")

    def _hand_to_stream(self, conn: _Conn, target: str, response: Response) -> bool | None:
        streams = response.stream
        assert streams is not None
        head = ["HTTP/1.1 200 OK", "Server: StreamBridge", "Cache-Control: no-store",
                "X-Content-Type-Options: nosniff", "Content-Type: text/event-stream; charset=utf-8",
                *(f"{k}: {v}" for k, v in response.headers.items())]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if not streams.attach(conn.sock, data + response.body, lambda: self._close(conn)):
            busy = Response(HTTPStatus.SERVICE_UNAVAILABLE,
                            f"{streams.max_streams} live views open already; close one\n".encode())
            self._count("refused_busy", conn.peer, "too many event streams")
            return self._write(conn, "GET", target, busy, keep=False)
        self._count("streams")
        log.debug('%s: %s "GET %s" 200 (event stream)', self.label, conn.peer[0], target[:200])
        return None

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


class _Stream:
    __slots__ = ("sock", "buf", "close", "last_write", "dead", "events")

    def __init__(self, sock: socket.socket, first: bytes, close: Any, now: float) -> None:
        self.sock = sock
        self.buf = bytearray(first)
        self.close = close
        self.last_write = now
        self.dead = False
        self.events = 0  # selector mask it is registered with (0: not yet)


class EventStreams:
    """Server-sent-event connections, all written by ONE thread (never a thread per client).

    :meth:`broadcast` (any thread, never blocks) appends an event to every client's buffer; the
    thread writes what each client can take without blocking. A client whose unsent backlog would
    pass ``max_backlog`` bytes (a phone that went to sleep, a stalled network) is closed: its
    browser reconnects and starts from a fresh snapshot. At most ``max_streams`` clients at once
    (:meth:`attach` refuses more). Every ``keepalive`` seconds without an event a comment line
    goes out, so a vanished client is noticed and proxies keep the connection. ``on_tick`` is
    called on the thread every ``tick`` seconds (for periodic events); an exception in it is
    logged (throttled) and the thread goes on.
    """

    def __init__(self, label: str, *, max_streams: int = 8, max_backlog: int = 256 * 1024,
                 keepalive: float = 15.0, tick: float = 0.5, on_tick: Any = None) -> None:
        if max_streams < 1 or max_backlog < 1024 or keepalive <= 0 or tick <= 0:
            raise ValueError("max_streams >= 1, max_backlog >= 1024, keepalive and tick > 0")
        self.label = label
        self.max_streams = int(max_streams)
        self.max_backlog = int(max_backlog)
        self.keepalive = float(keepalive)
        self.tick = float(tick)
        self.on_tick = on_tick
        self.hello: Any = None
        self.dropped_slow = 0
        self._lock = threading.Lock()
        self._streams: dict[socket.socket, _Stream] = {}
        self._errors = LogThrottle(10.0)
        self._closing = False
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._streams)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.label, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._closing = True
        self._wake()
        if self._thread is not None:
            self._thread.join(2.0)
        with self._lock:
            left = list(self._streams.values())
            self._streams.clear()
        for st in left:
            st.close()
        for s in (self._wake_r, self._wake_w):
            _close_quietly(s)
        try:
            self._sel.close()
        except Exception:  # already closed
            pass

    def attach(self, sock: socket.socket, first: bytes, close: Any) -> bool:
        """Take over ``sock`` (its answer head and anything else in ``first`` go out first);
        ``close()`` is called once when the stream ends. False (nothing taken) when full.
        ``hello()``, if set, returns the first event (a snapshot); it is made under the same
        lock :meth:`broadcast` takes, so no event is missed or overtaken between the two."""
        if self._closing:
            return False
        try:
            sock.setblocking(False)
        except OSError:
            return False
        with self._lock:
            if len(self._streams) >= self.max_streams:
                return False
            extra = self.hello() if self.hello is not None else b""
            self._streams[sock] = _Stream(sock, first + extra, close, time.monotonic())
        self._wake()
        return True

    def broadcast(self, data: bytes) -> None:
        """Queue ``data`` (one or more whole events) for every client."""
        slow = False
        with self._lock:
            for st in self._streams.values():
                if st.dead:
                    continue
                if len(st.buf) + len(data) > self.max_backlog:
                    st.dead = True
                    self.dropped_slow += 1
                    slow = True
                    continue
                st.buf += data
        if slow and self._errors.hit() is not None:
            log.info("%s: closed a live view that could not keep up (its browser reconnects)", self.label)
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick
        while not self._closing:
            with self._lock:
                streams = list(self._streams.values())
            for st in streams:
                if st.dead:
                    self._drop(st)
                    continue
                want = selectors.EVENT_READ | (selectors.EVENT_WRITE if st.buf else 0)
                if want != st.events:
                    try:
                        if st.events:
                            self._sel.modify(st.sock, want, st)
                        else:
                            self._sel.register(st.sock, want, st)
                        st.events = want
                    except (OSError, ValueError, KeyError):
                        self._drop(st)
            try:
                events = self._sel.select(max(0.0, next_tick - time.monotonic()))
            except OSError:  # pragma: no cover - closed under us at stop
                break
            for key, mask in events:
                st = key.data
                if st is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                    continue
                if mask & selectors.EVENT_READ:
                    try:
                        got = st.sock.recv(4096)
                    except (BlockingIOError, InterruptedError):
                        got = b"?"
                    except OSError:
                        got = b""
                    if not got:  # the client went away
                        self._drop(st)
                        continue
                if mask & selectors.EVENT_WRITE:
                    self._flush(st)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.tick
                if self.on_tick is not None:
                    try:
                        self.on_tick()
                    except Exception:
                        if self._errors.hit() is not None:
                            log.warning("%s: periodic event failed", self.label, exc_info=True)
                with self._lock:
                    for st in self._streams.values():
                        if not st.buf and now - st.last_write > self.keepalive:
                            st.buf += b": keep-alive\n\n"
            with self._lock:
                pending = [st for st in self._streams.values() if st.buf and not st.dead]
            for st in pending:
                self._flush(st)

    def _flush(self, st: _Stream) -> None:
        with self._lock:
            data = bytes(st.buf)
        if not data:
            return
        try:
            sent = st.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(st)
            return
        with self._lock:
            del st.buf[:sent]
        st.last_write = time.monotonic()

    def _drop(self, st: _Stream) -> None:
        with self._lock:
            if self._streams.get(st.sock) is not st:
                return
            del self._streams[st.sock]
        if st.events:
            try:
                self._sel.unregister(st.sock)
            except (KeyError, ValueError, OSError):
                pass
        st.close()
