"""A small threaded HTTP server for the daemon's side services (status page, OSCQuery).

A service subclasses :class:`LocalHttpServer` and implements ``route(path, query) -> Response``,
called on the server's threads for GET and HEAD (other methods get 405). An exception in it is logged (throttled) and answered
with 500; a client that goes away mid-answer is ignored. Nothing here prints: the stdlib's
per-request log lines go to ``logging`` at debug level.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bridge.runtime.throttle import LogThrottle

log = logging.getLogger(__name__)


@dataclass
class Response:
    code: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: LocalHttpServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:  # never print to stderr
        if self.owner.errors.hit() is not None:
            log.warning("%s: request from %s failed", self.owner.label, client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: %s - %s", self.server.owner.label, self.address_string(), format % args)

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _method_not_allowed(self) -> None:
        self._send(Response(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD\n", headers={"Allow": "GET, HEAD"}),
                   head=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    def _answer(self, head: bool) -> None:
        owner = self.server.owner
        path, _, query = self.path.partition("?")
        try:
            response = owner.route(path, query)
        except Exception:
            if owner.errors.hit() is not None:
                log.warning("%s: %s failed", owner.label, self.path[:200], exc_info=True)
            response = Response(HTTPStatus.INTERNAL_SERVER_ERROR, b"error (see the daemon log)\n")
        try:
            self._send(response, head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away

    def _send(self, response: Response, head: bool) -> None:
        self.send_response(response.code)
        if response.code != HTTPStatus.NO_CONTENT:
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in response.headers.items():
            self.send_header(k, v)
        self.end_headers()
        if not head and response.code != HTTPStatus.NO_CONTENT:
            self.wfile.write(response.body)


class LocalHttpServer:
    """Binds at construction (a busy port fails then, at start-up), serves on a daemon thread.
    Subclasses answer requests in :meth:`route`."""

    def __init__(self, host: str, port: int, label: str) -> None:
        self.label = label
        self.errors = LogThrottle(10.0)
        self._server = _Server((host, port), self)
        self._thread: threading.Thread | None = None

    def route(self, path: str, query: str) -> Response:
        raise NotImplementedError

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}/"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=self.label, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(2.0)
        self._server.server_close()
