"""A small local web page: the daemon's health and a preview of its input and output; and, when
switched on (``status.control``), the browser control page.

``http://HOST:PORT/`` shows the source state, output and processed fps, latency, drops, sinks and
the current preset with readable names and a line on what each means, next to the latest input
and output frames (JPEG, at most 384 px wide), and refreshes itself twice a second. Other paths:
``/status.json`` (the same figures), ``/input.jpg``, ``/output.jpg`` (503 until a frame exists),
``/static/...`` (the pages' files, package data). Only GET and HEAD are served, unless the
control page is on:

``/control`` is the control page (:mod:`bridge.web`); ``GET /api/state`` its parameter table,
values, presets and plots' history; ``GET /api/events`` a server-sent-event stream of every
change; ``POST /api/osc`` a change (JSON, validated like an OSC packet). A POST must be
``Content-Type: application/json`` and, when the browser says where it comes from (``Origin``,
``Sec-Fetch-Site``), come from this page: another web site cannot send changes through a visitor's
browser (a cross-site JSON POST needs a CORS preflight, which this server never grants).

The page reads what the other threads already publish (metrics, the latest frames by reference);
it never touches the model, the pipeline or a sink, and an error in a request is logged and
answered with 500 without affecting anything else. Each preview is encoded once per frame: the
JPEG is kept with the frame it came from (by identity) and every client asking before the next
frame gets the same bytes, so the encoding cost does not grow with the number of viewers. It
listens on 127.0.0.1 unless told otherwise: there is no authentication, so only open it to a
network you trust (the server's connection cap, timeouts, Host check and allow-list are in
:mod:`bridge.httpserver`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from http import HTTPStatus
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.httpserver import EventStreams, LocalHttpServer, Response

if TYPE_CHECKING:
    from bridge.web.api import ControlApi

log = logging.getLogger(__name__)

PREVIEW_MAX_WIDTH = 384
JPEG_QUALITY = 80

_STATIC = ("status.html", "status.js", "page.css", "control.html", "control.js", "control.css")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
#: the pages load nothing from elsewhere and run no inline script
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _load_assets() -> dict[str, bytes]:
    """The page files, shipped as package data in ``bridge/web/static`` (read once)."""
    folder = resources.files("bridge.web").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in _STATIC}


def encode_preview(rgb: np.ndarray, max_width: int = PREVIEW_MAX_WIDTH, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an H x W x 3 uint8 RGB frame, scaled down to at most ``max_width`` wide."""
    import cv2

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected H x W x 3 uint8, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    if w > max_width:
        rgb = cv2.resize(rgb, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


class _Preview:
    """The JPEG of one preview stream, kept with the frame object it was encoded from."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frame: np.ndarray | None = None  # held, so its identity cannot be reused meanwhile
        self.jpeg = b""
        self.encodes = 0


class StatusPage(LocalHttpServer):
    """The page's server. ``status()`` returns a JSON-able dict; ``frame(which)`` the latest
    ``"input"`` or ``"output"`` RGB frame or None; a new frame is a new array object (a frame is
    never written to after it is published). Both are called on the server's threads.
    ``allow`` and ``**server`` go to :class:`bridge.httpserver.LocalHttpServer`."""

    def __init__(self, host: str, port: int, status: Callable[[], dict[str, Any]],
                 frame: Callable[[str], np.ndarray | None], *, allow: Sequence[str] | None = None,
                 control: ControlApi | None = None, max_streams: int = 8, **server: Any) -> None:
        self.status = status
        self.frame = frame
        self._previews = {"input": _Preview(), "output": _Preview()}
        self._assets = _load_assets()
        self.control = control
        self.events: EventStreams | None = None
        self.live = None
        if control is not None:
            from bridge.web.api import LiveEvents

            self.events = EventStreams("status-page-events", max_streams=max_streams)
            self.live = LiveEvents(control, self.events.broadcast)
            self.events.on_tick = self.live.tick
            self.events.hello = self.live.hello
        super().__init__(host, port, "status-page", allow=allow, **server)  # binds now

    @property
    def encodes(self) -> int:
        """JPEGs encoded so far (each preview frame once)."""
        return sum(p.encodes for p in self._previews.values())

    def preview_jpeg(self, which: str) -> bytes | None:
        """The JPEG of the current ``which`` frame, encoded at most once per frame however many
        clients ask (concurrent requests for a new frame wait for the one encoding)."""
        frame = self.frame(which)
        if frame is None:
            return None
        cache = self._previews[which]
        with cache.lock:
            if cache.frame is not frame:
                cache.jpeg = encode_preview(frame)
                cache.frame = frame
                cache.encodes += 1
            return cache.jpeg

    def _asset(self, name: str) -> Response:
        headers = {"Content-Security-Policy": _CSP} if name.endswith(".html") else {}
        return Response(HTTPStatus.OK, self._assets[name], _TYPES[name[name.rindex("."):]], headers)

    def route(self, path: str, query: str) -> Response:
        if path == "/":
            return self._asset("status.html")
        if path.startswith("/static/") and path[8:] in self._assets and not path.endswith(".html"):
            return self._asset(path[8:])
        if path == "/status.json":
            status = {**self.status(), "control_page": self.control is not None}
            return Response(HTTPStatus.OK, json.dumps(status, default=str).encode(), "application/json")
        if path in ("/control", "/api/state", "/api/events"):
            if self.control is None or self.live is None:
                return Response(HTTPStatus.NOT_FOUND, b"the control page is off (status.control: true, or "
                                b"streambridge run --control, turns it on)\n")
            if path == "/control":
                return self._asset("control.html")
            if path == "/api/state":
                state = {**self.control.describe(), "history": self.live.history()}
                return _json(HTTPStatus.OK, state)
            return Response(HTTPStatus.OK, stream=self.events)
        if path in ("/input.jpg", "/output.jpg"):
            jpeg = self.preview_jpeg(path[1:-4])
            if jpeg is None:
                return Response(HTTPStatus.SERVICE_UNAVAILABLE, b"no frame yet\n")
            return Response(HTTPStatus.OK, jpeg, "image/jpeg")
        return Response(HTTPStatus.NOT_FOUND, b"not found\n")

    def post(self, path: str, query: str, headers: dict[str, str], body: bytes) -> Response | None:
        if self.control is None or path != "/api/osc":
            return None  # 405, as for every other path
        if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"ok": False, "address": "",
                                                             "reason": "send Content-Type: application/json"})
        if not self._same_origin(headers):
            return _json(HTTPStatus.FORBIDDEN, {"ok": False, "address": "",
                                                "reason": "changes are only taken from this server's own page"})
        code, answer = self.control.apply(body)
        return _json(code, answer)

    def _same_origin(self, headers: dict[str, str]) -> bool:
        """False when the browser says the request comes from another site."""
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = headers.get("origin")
        if origin is None:
            return True  # not sent by a browser page (curl, a script): the Host check applies
        return origin.lower() == "http://" + headers.get("host", "").lower()

    def start(self) -> None:
        super().start()
        if self.events is not None:
            self.events.start()
        log.info("status page on %s%s", self.url, f" (control page: {self.url}control)" if self.control else "")

    def stop(self) -> None:
        if self.events is not None:
            self.events.stop()
        super().stop()


def _json(code: int, data: Any) -> Response:
    return Response(code, json.dumps(data, default=str).encode(), "application/json")
