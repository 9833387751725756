"""OSCQuery: the OSC address space described over HTTP as JSON, and announced over mDNS.

Controllers that speak OSCQuery (Chataigne, Vezér, ossia score, TouchDesigner's OSCQuery
components, oscqueryhtml) browse ``http://HOST:PORT/`` and build their faders from it: every
address the control surface accepts, with its OSC type, range, description and current value,
plus the read-only ``/sd/status/*`` figures. Control itself stays on the OSC UDP port.

Served (JSON, per the OSCQuery proposal): ``GET /path`` -> the node and everything under it;
``GET /path?ATTRIBUTE`` -> ``{"ATTRIBUTE": ...}`` (204 when the node has none, 400 for a name that
is not an attribute); ``GET /?HOST_INFO`` -> name, OSC port and transport, supported extensions.
Unknown paths are 404. Not supported (and said so in ``EXTENSIONS``): websocket LISTEN streaming
and path-change notifications. The HTTP side is :class:`bridge.httpserver.LocalHttpServer`: a
connection cap, request timeouts, a ``Host`` check against DNS rebinding, and ``osc.allow``
applied to HTTP clients as to OSC senders (others get 403).

With ``advertise``, the OSC port is announced as ``_osc._udp`` and the OSCQuery port as
``_oscjson._tcp`` over mDNS (``zeroconf``), on a background thread so start-up never waits for it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from bridge.control.feedback import STATUS_PREFIX
from bridge.control.surface import (
    ADDR_DOWNBEAT,
    ADDR_PRESET,
    ADDR_PRESET_NEXT,
    ADDR_PRESET_PREV,
    ADDR_PRESET_SAVE,
    ADDR_STATE,
    ADDR_TAP,
    LFO_PREFIX,
    ControlSurface,
)
from bridge.httpserver import LocalHttpServer, Response
from bridge.lfo import MAX_DEPTH, MAX_RATE, MIN_RATE, SHAPES
from bridge.params import BY_ADDRESS, NORMALIZABLE, normalize

log = logging.getLogger(__name__)

ACCESS_NONE, ACCESS_READ, ACCESS_WRITE, ACCESS_RW = 0, 1, 2, 3
ATTRIBUTES = ("FULL_PATH", "CONTENTS", "TYPE", "ACCESS", "VALUE", "RANGE", "DESCRIPTION")
EXTENSIONS = {
    "ACCESS": True, "VALUE": True, "RANGE": True, "DESCRIPTION": True, "TAGS": False, "EXTENDED_TYPE": False,
    "UNIT": False, "CRITICAL": False, "CLIPMODE": False, "LISTEN": False, "PATH_CHANGED": False,
    "PATH_RENAMED": False, "PATH_ADDED": False, "PATH_REMOVED": False, "HTML": False,
}
_TYPE_TAGS = {str: "s", float: "f", int: "i", bool: "T"}
_TRIGGERS = {
    ADDR_PRESET_NEXT: "recall the next preset (a trigger; 0/False is a button release and does nothing)",
    ADDR_PRESET_PREV: "recall the previous preset (a trigger)",
    ADDR_STATE: "send every parameter's current value to the feedback targets (a trigger)",
    ADDR_TAP: "tap tempo: the tempo follows the average of the recent taps (a trigger)",
    ADDR_DOWNBEAT: "this is the first beat of a bar: moves the internal clock's bar line here (a trigger)",
}
_LFO_TYPES = {"shape": "s", "rate": "f", "sync": "T", "depth": "f", "depth_norm": "f", "phase": "f", "enabled": "T"}
_LFO_DOCS = {
    "shape": "LFO wave: " + ", ".join(SHAPES),
    "rate": "LFO rate: cycle length in beats when sync is on, else Hz",
    "sync": "LFO follows the tempo (rate in beats) or runs free (rate in Hz)",
    "depth": "LFO depth: the peak deviation, in the parameter's units",
    "depth_norm": "LFO depth as a fraction of the parameter's control range",
    "phase": "LFO phase offset, in cycles",
    "enabled": "LFO on/off",
}
_LFO_RANGES = {"rate": (MIN_RATE, MAX_RATE), "depth": (0.0, MAX_DEPTH), "depth_norm": (0.0, 1.0), "phase": (0.0, 1.0)}


def _leaf(surface: ControlSurface, address: str, values: Mapping[str, Any], presets: Sequence[str]) -> dict[str, Any]:
    """The OSCQuery attributes of one accepted address."""
    by_address = getattr(surface, "by_address", BY_ADDRESS)
    numeric = getattr(surface, "normalizable", NORMALIZABLE)
    if address in by_address:
        spec = by_address[address]
        value = values.get(spec.name, spec.default)
        node: dict[str, Any] = {"TYPE": _TYPE_TAGS[spec.kind], "ACCESS": ACCESS_RW, "VALUE": [value],
                                "DESCRIPTION": spec.doc}
        if spec.kind in (int, float):
            node["RANGE"] = [{"MIN": spec.lo, "MAX": spec.hi}]
            node["DESCRIPTION"] += " (values outside the range are rejected, not clamped)"
        return node
    if address in numeric:
        spec = numeric[address]
        lo, hi = surface.control_range(spec.name)
        value = values.get(spec.name, spec.default)
        return {"TYPE": "f", "ACCESS": ACCESS_RW, "VALUE": [round(normalize(spec, value, (lo, hi)), 6)],
                "RANGE": [{"MIN": 0.0, "MAX": 1.0}], "DESCRIPTION": f"{spec.doc}: 0..1 spans {lo:g}..{hi:g}"}
    if address == ADDR_PRESET:
        return {"TYPE": "s", "ACCESS": ACCESS_WRITE, "RANGE": [{"VALS": list(presets)}],
                "DESCRIPTION": "recall a preset by name (or by its index in this list, as an int)"}
    if address == ADDR_PRESET_SAVE:
        return {"TYPE": "s", "ACCESS": ACCESS_WRITE,
                "DESCRIPTION": "save the live state as a preset with this name ([A-Za-z0-9_-], up to 64); "
                               "an existing one is replaced only with a second argument 1"}
    if address in _TRIGGERS:
        return {"TYPE": "I", "ACCESS": ACCESS_WRITE, "DESCRIPTION": _TRIGGERS[address]}
    if address.startswith(LFO_PREFIX):
        param, _, lfo_field = address[len(LFO_PREFIX):].partition("/")
        node = {"TYPE": _LFO_TYPES[lfo_field], "ACCESS": ACCESS_WRITE,
                "DESCRIPTION": f"{_LFO_DOCS[lfo_field]} (on {param})"}
        if lfo_field == "shape":
            node["RANGE"] = [{"VALS": list(SHAPES)}]
        elif lfo_field in ("sync", "enabled"):
            node["RANGE"] = [{"VALS": [False, True]}]
        elif lfo_field in _LFO_RANGES:
            lo, hi = _LFO_RANGES[lfo_field]
            node["RANGE"] = [{"MIN": lo, "MAX": hi}]
        return node
    raise KeyError(address)


def _status_leaf(value: Any) -> dict[str, Any] | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    tag = "s" if isinstance(value, str) else "i" if isinstance(value, int) else "f"
    return {"TYPE": tag, "ACCESS": ACCESS_READ, "VALUE": [value], "DESCRIPTION": "status (sent to the feedback targets)"}


def namespace(surface: ControlSurface, values: Mapping[str, Any], presets: Sequence[str],
              status: Mapping[str, Any]) -> dict[str, Any]:
    """The whole OSCQuery tree: containers for every path prefix, a method node per address."""
    root: dict[str, Any] = {"FULL_PATH": "/", "ACCESS": ACCESS_NONE, "CONTENTS": {},
                            "DESCRIPTION": "StreamBridge real-time diffusion"}

    def node_at(path: str) -> dict[str, Any]:
        node = root
        full = ""
        for part in path.strip("/").split("/"):
            full += "/" + part
            contents = node.setdefault("CONTENTS", {})
            node = contents.setdefault(part, {"FULL_PATH": full, "ACCESS": ACCESS_NONE})
        return node

    for address in surface.addresses:
        node_at(address).update(_leaf(surface, address, values, presets))
    for key, value in status.items():
        leaf = _status_leaf(value)
        if leaf is not None:
            node_at(STATUS_PREFIX + key).update(leaf)
    return root


def find(tree: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The node at ``path`` (``/`` is the root), or None."""
    node = tree
    for part in [p for p in path.split("/") if p]:
        node = node.get("CONTENTS", {}).get(part)
        if node is None:
            return None
    return node


def host_info(name: str, osc_host: str, osc_port: int) -> dict[str, Any]:
    info: dict[str, Any] = {"NAME": name, "OSC_PORT": int(osc_port), "OSC_TRANSPORT": "UDP", "EXTENSIONS": EXTENSIONS}
    if osc_host not in ("", "0.0.0.0", "::"):
        info["OSC_IP"] = osc_host
    return info


class OscQueryServer(LocalHttpServer):
    """The OSCQuery HTTP service. The callables are read on the server's threads: ``values()``
    the live parameters, ``presets()`` the preset names, ``status()`` the status figures.
    ``allow`` (the ``osc.allow`` entries) and ``**server`` go to the HTTP server."""

    def __init__(self, host: str, port: int, *, name: str, osc_address: tuple[str, int], surface: ControlSurface,
                 values: Callable[[], Mapping[str, Any]], presets: Callable[[], Sequence[str]],
                 status: Callable[[], Mapping[str, Any]], allow: Sequence[str] | None = None,
                 **server: Any) -> None:
        self.name = name
        self.osc_address = osc_address
        self.surface = surface
        self.values = values
        self.presets = presets
        self.status = status
        super().__init__(host, port, "oscquery", allow=allow, **server)  # binds now

    def tree(self) -> dict[str, Any]:
        return namespace(self.surface, self.values(), self.presets(), self.status())

    def route(self, path: str, query: str) -> Response:
        if query == "HOST_INFO":
            return _json(host_info(self.name, *self.osc_address))
        node = find(self.tree(), path)
        if node is None:
            return Response(HTTPStatus.NOT_FOUND, b"no such OSC path\n")
        if not query:
            return _json(node)
        if query not in ATTRIBUTES:
            return Response(HTTPStatus.BAD_REQUEST, f"unknown attribute {query[:64]!r}\n".encode())
        if query not in node:
            return Response(HTTPStatus.NO_CONTENT)
        return _json({query: node[query]})

    def start(self) -> None:
        super().start()
        log.info("OSCQuery on %s (OSC on UDP port %d)", self.url, self.osc_address[1])


def _json(obj: Any) -> Response:
    return Response(HTTPStatus.OK, json.dumps(obj).encode(), "application/json")


def announce_addresses(host: str) -> list[str]:
    """The IPv4 addresses to announce for a service listening on ``host``: that address, or for a
    wildcard (``0.0.0.0``/empty) every non-loopback IPv4 address of this machine (loopback only
    when there is nothing else)."""
    if host not in ("", "0.0.0.0"):
        return [socket.gethostbyname(host)]  # an address stays itself; a name (localhost) resolves
    import ifaddr  # installed with zeroconf

    found = [ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
             if isinstance(ip.ip, str) and not ip.ip.startswith("169.254.")]
    outside = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    return sorted(set(outside or found or ["127.0.0.1"]))


class Advertiser:
    """mDNS/Bonjour announcements of the OSC port (``_osc._udp``) and, when given, the OSCQuery
    port (``_oscjson._tcp``). Registration (about 2 s of probing) runs on its own thread."""

    def __init__(self, name: str, host: str, osc_port: int, query_port: int | None) -> None:
        self.name = name
        self.host = host
        self.osc_port = osc_port
        self.query_port = query_port
        self.registered: list[str] = []
        self._zc: Any = None
        self._infos: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._register, name="mdns", daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return bool(self.registered)

    def _register(self) -> None:
        from zeroconf import IPVersion, ServiceInfo, Zeroconf

        try:
            announced = announce_addresses(self.host)
            if all(ipaddress.ip_address(a).is_loopback for a in announced):
                log.warning("osc.listen is on %s: only this machine can reach it; listen on 0.0.0.0 or the "
                            "LAN address for other devices to use what is announced", self.host)
            zc = Zeroconf(interfaces=announced, ip_version=IPVersion.V4Only)
            packed = [socket.inet_aton(a) for a in announced]
            server = f"{socket.gethostname().split('.')[0] or 'streambridge'}.local."
            services = [("_osc._udp.local.", self.osc_port)]
            if self.query_port is not None:
                services.append(("_oscjson._tcp.local.", self.query_port))
            for kind, port in services:
                info = ServiceInfo(kind, f"{self.name}.{kind}", port=port, addresses=packed, server=server)
                with self._lock:
                    if self._closed:
                        break
                zc.register_service(info, allow_name_change=True)
                with self._lock:
                    self._infos.append(info)
                    self.registered.append(f"{info.name} port {port}")
            with self._lock:
                self._zc = zc
                closed = self._closed
            if closed:
                self._close(zc)
                return
            log.info("mDNS: announced %s", "; ".join(self.registered))
        except Exception as exc:  # the HTTP/OSC services work without it: say so, loudly
            log.error("mDNS announcement failed (%s: %s); controllers must be given HOST:PORT by hand",
                      type(exc).__name__, exc)

    def _close(self, zc: Any) -> None:
        try:
            for info in self._infos:
                zc.unregister_service(info)
        finally:
            zc.close()

    def stop(self) -> None:
        with self._lock:
            self._closed = True
            zc, self._zc = self._zc, None
        if zc is not None:
            try:
                self._close(zc)
            except Exception as exc:
                log.debug("mDNS shutdown: %s", exc)
