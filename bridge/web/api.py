"""The control page's HTTP API, independent of sockets (the server is :mod:`bridge.status_page`).

``POST /api/osc`` takes JSON: ``{"address": "/sd/strength", "args": [0.6]}``, or
``{"messages": [{...}, {...}]}`` for several changes applied together (all or nothing, like an
OSC bundle). Each message becomes an OSC message (strings ``s``, booleans ``T``/``F``, integers
``i``, other numbers ``d``, null ``N``) and goes through :meth:`ControlSurface.validate`, the
very validator an OSC packet goes through, then to the same ``submit`` as the OSC receiver's. A
refusal changes nothing: it is answered 400 ``{"ok": false, "address", "reason"}`` and reported
like a refused OSC packet (``/sd/error`` to the feedback targets). A command queue that is full
answers 503 with its reason.

:class:`LiveEvents` turns what the daemon reports (every applied change, whatever its cause;
status; errors) into server-sent events: ``hello`` (the whole state, first on every stream),
``params``, ``state``, ``sd_error`` (what ``/sd/error`` reports), ``presets`` and ``status`` (figures twice a second, also kept
for the plots of the last 60 s).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from bridge.control.codec import OscBundle, OscMessage
from bridge.control.inbox import Refusal
from bridge.control.surface import Command, ControlSurface, Rejected

MAX_MESSAGES = 16
MAX_ARGS = 8
HISTORY_S = 60.0
_INT32 = 2**31


def param_table(surface: ControlSurface) -> list[dict[str, Any]]:
    """Every live parameter as the page needs it: name, OSC address, kind (``float``, ``int``,
    ``bool``, ``str``), hard range, the fader's control range (the ``/sd/norm`` one, including
    ``osc.ranges``), default and description. New parameters appear here without page changes."""
    out = []
    for spec in surface.params.values():  # the live table: the configured ControlNets' knobs too
        row: dict[str, Any] = {"name": spec.name, "address": spec.address, "kind": spec.kind.__name__,
                               "default": spec.default, "doc": spec.doc, "lo": spec.lo, "hi": spec.hi}
        if spec.kind in (int, float):
            row["control"] = list(surface.control_range(spec.name))
        out.append(row)
    return out


def _arg(value: Any) -> tuple[str, Any]:
    if isinstance(value, bool):
        return ("T" if value else "F"), value
    if value is None:
        return "N", None
    if isinstance(value, str):
        return "s", value
    if isinstance(value, int):
        return ("i" if -_INT32 <= value < _INT32 else "h"), value
    if isinstance(value, float):
        return "d", value
    raise ValueError(f"arguments are numbers, strings, booleans or null, got {type(value).__name__}")


def to_message(item: Any) -> OscMessage:
    """One JSON message object -> an :class:`OscMessage`. ValueError says what is wrong."""
    if not isinstance(item, dict) or not isinstance(item.get("address"), str):
        raise ValueError('expected {"address": "/sd/...", "args": [...]}')
    extra = set(item) - {"address", "args"}
    if extra:
        raise ValueError(f"unknown key(s) {', '.join(sorted(extra))}")
    args = item.get("args", [])
    if not isinstance(args, list):
        args = [args]
    if len(args) > MAX_ARGS:
        raise ValueError(f"at most {MAX_ARGS} arguments")
    typed = [_arg(a) for a in args]
    return OscMessage(item["address"], "".join(t for t, _ in typed), tuple(v for _, v in typed))


def parse_request(body: bytes) -> OscMessage | OscBundle:
    """The JSON body of ``POST /api/osc`` -> an OSC message or bundle. ValueError on bad input."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if isinstance(data, dict) and "messages" in data:
        if set(data) != {"messages"} or not isinstance(data["messages"], list):
            raise ValueError('expected {"messages": [...]}')
        items = data["messages"]
        if not 1 <= len(items) <= MAX_MESSAGES:
            raise ValueError(f"1 to {MAX_MESSAGES} messages")
        return OscBundle(1, tuple(to_message(m) for m in items))
    return to_message(data)


def _address_of(packet: OscMessage | OscBundle) -> str:
    if isinstance(packet, OscMessage):
        return packet.address
    first = packet.elements[0]
    return first.address if isinstance(first, OscMessage) else "/sd"


class ControlApi:
    """What the page may do, with the daemon's callables.

    ``submit(batch)`` queues a validated batch like the OSC receiver does (returns a
    :class:`Refusal` when the queue is full); ``on_error(address, reason)`` reports a refusal like
    a refused OSC packet; ``values()`` the live values; ``presets()`` the preset names;
    ``status()`` the daemon's figures (``preset`` among them).
    """

    def __init__(self, surface: ControlSurface, submit: Callable[[list[Command]], Refusal | None], *,
                 values: Callable[[], dict[str, Any]], presets: Callable[[], list[str]],
                 status: Callable[[], dict[str, Any]],
                 on_error: Callable[[str, str], None] = lambda address, reason: None) -> None:
        self.surface = surface
        self.submit = submit
        self.values = values
        self.presets = presets
        self.status = status
        self.on_error = on_error
        self.counts = dict.fromkeys(("accepted", "refused", "busy"), 0)
        self._count_lock = threading.Lock()  # requests arrive on several server workers

    def _count(self, key: str) -> None:
        with self._count_lock:
            self.counts[key] += 1

    def describe(self) -> dict[str, Any]:
        """Everything the page builds itself from (the first event of every stream, and
        ``GET /api/state``)."""
        status = self.status()
        return {"params": param_table(self.surface), "values": _jsonable(self.values()),
                "presets": list(self.presets()), "preset": status.get("preset", ""), "status": status}

    def apply(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Handle ``POST /api/osc``: (HTTP code, JSON answer)."""
        try:
            packet = parse_request(body)
        except ValueError as exc:
            self._count("refused")
            return 400, {"ok": False, "address": "", "reason": str(exc)}
        result = self.surface.validate(packet)
        if isinstance(result, Rejected):
            self._count("refused")
            self.on_error(result.address, result.reason)
            return 400, {"ok": False, "address": result.address, "reason": result.reason}
        if not result:  # a button release: accepted, nothing to do
            return 200, {"ok": True, "applied": False}
        refusal = self.submit(result)
        if refusal is not None:
            self._count("busy")
            return 503, {"ok": False, "address": refusal.address, "reason": refusal.reason}
        self._count("accepted")
        return 200, {"ok": True, "applied": True, "address": _address_of(packet)}


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        elif not isinstance(v, (bool, int, float, str)) and v is not None:
            v = str(v)
        out[k] = v
    return out


def sse(event: str, data: Any) -> bytes:
    """One server-sent event (``data`` as one line of JSON)."""
    return f"event: {event}\ndata: {json.dumps(data, default=str, allow_nan=False)}\n\n".encode()


class LiveEvents:
    """Feeds an :class:`bridge.httpserver.EventStreams`: :meth:`publish` is called with what the
    daemon's feedback thread takes (changes, status, errors); :meth:`tick` (on the streams'
    thread, twice a second) samples the figures into a 60 s history and notices preset files
    that appeared or went away. ``clock`` is injectable for tests."""

    def __init__(self, api: ControlApi, broadcast: Callable[[bytes], None], *,
                 clock: Callable[[], float] = time.monotonic, history_s: float = HISTORY_S) -> None:
        self.api = api
        self.broadcast = broadcast
        self.clock = clock
        self.history_s = history_s
        self._lock = threading.Lock()
        self._history: deque[dict[str, float]] = deque()
        self._last: tuple[float, int] | None = None  # (time, dropped) of the previous sample
        self._presets: list[str] | None = None

    def hello(self) -> bytes:
        """The first event of a new stream: the whole state, the plots' history."""
        state = self.api.describe()
        with self._lock:
            state["history"] = list(self._history)
        return b"retry: 2000\n\n" + sse("hello", state)

    def publish(self, params: dict[str, Any], status: dict[str, Any], errors: list[tuple[str, str]]) -> None:
        out = b""
        if params:
            out += sse("params", _jsonable(params))
        if status:
            out += sse("state", _jsonable(status))
        for address, reason in errors:
            out += sse("sd_error", {"address": address, "reason": reason})
        if out:
            self.broadcast(out)

    def sample(self) -> dict[str, Any]:
        """Take one sample of the figures, keep it (60 s) and return it."""
        status = self.api.status()
        now = self.clock()
        dropped = int(status.get("dropped", 0))
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = max(0, dropped - self._last[1]) / (now - self._last[0])
        self._last = (now, dropped)
        point = {"t": round(now, 3), "fps": float(status.get("fps", 0.0)),
                 "fps_processed": float(status.get("fps_processed", 0.0)),
                 "latency_ms": float(status.get("latency_ms", 0.0)), "drops_per_s": round(rate, 2)}
        with self._lock:
            self._history.append(point)
            while self._history and now - self._history[0]["t"] > self.history_s:
                self._history.popleft()
        return {"point": point, "status": _jsonable(status)}

    def history(self) -> list[dict[str, float]]:
        with self._lock:
            return list(self._history)

    def tick(self) -> None:
        """Figures for the plots; the preset list when it changed (only this thread tracks it:
        a new viewer's snapshot must not hide a change from the others)."""
        out = sse("status", self.sample())
        names = list(self.api.presets())
        if names != self._presets:
            self._presets = names
            out += sse("presets", {"presets": names})
        self.broadcast(out)
