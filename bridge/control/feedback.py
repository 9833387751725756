"""OSC feedback: parameter echo, status telemetry and rate-limited error replies.

Everything here is thread-safe and never raises on network trouble: a failed send is logged at
DEBUG and counted (:meth:`FeedbackSender.stats`), because a feedback target that went away (a
closed TouchOSC, an unplugged laptop) must never disturb the show. Datagrams leave through a
non-blocking transport (:class:`bridge.control.server.UdpSender` by default); the logic here is
pure and takes an injectable transport and clock for tests.

What is sent (see docs/osc.md):

* ``send_params({"guidance": 3.0, ...})``: each value on its own address (``/sd/guidance f``);
  numbers also on ``/sd/norm/<param>`` as 0..1 over the control range, so faders mapped to the
  normalized addresses follow too. Booleans are sent as int 0/1 (what faders and toggles read).
* ``send_status({"fps": 29.8, ...})`` on ``/sd/status/<key>`` (a tuple value is sent as several
  arguments); ``maybe_send_status`` does so at most ``status_hz`` times a second.
* LFO settings (``lfo/<param>/<field>`` keys of ``send_params``) go out on ``/sd/lfo/<param>/<field>``.
* With ``bundle=True`` (the daemon's default, ``osc.feedback_bundles``) the messages of one
  ``send_params`` / ``send_status`` call leave packed in OSC bundles of at most 1,200 bytes (one
  datagram for a whole frame's worth of echo instead of one per value); a lone message goes out
  plain.
* ``send_error(address, reason)`` on ``/sd/error s s``, through a token bucket (``error_burst``
  at once, ``error_rate`` per second sustained). Suppressed replies are counted, and the next
  reply that goes out says how many were suppressed before it.
"""

from __future__ import annotations

import logging
import numbers
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from bridge.control.codec import encode_bundle, encode_message
from bridge.control.server import UdpSender
from bridge.control.surface import validate_ranges
from bridge.params import NORM_PREFIX, PARAMS, ParamSpec, normalize

log = logging.getLogger("bridge.control.feedback")

ERROR_ADDRESS = "/sd/error"
STATUS_PREFIX = "/sd/status/"
MAX_REASON_CHARS = 300
# a feedback bundle stays well inside one Ethernet frame (1,472 bytes of UDP payload at MTU 1500):
# no IP fragmentation on the way to a tablet running TouchOSC
MAX_BUNDLE_BYTES = 1200
BUNDLE_HEADER_BYTES = 16  # "#bundle\0" + the 8-byte timetag
# a key may have path parts: "control/0/state" goes out on /sd/status/control/0/state
_STATUS_KEY_RE = re.compile(r"^(?=.{1,64}$)[a-z][a-z0-9_]*(?:/[a-z0-9_]+)*$")

Dest = Any  # whatever the transport's resolve() returns


class Transport(Protocol):
    def resolve(self, host: str, port: int) -> Dest: ...

    def send(self, data: bytes, dest: Dest) -> None: ...

    def close(self) -> None: ...


def parse_target(spec: str) -> tuple[str, int]:
    """Parse a feedback target ``HOST:PORT`` (``[IPv6]:PORT`` for IPv6). Raises ValueError."""
    hint = "expected HOST:PORT, e.g. 127.0.0.1:9401 or [::1]:9401"
    text = spec.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or not text[close + 1 :].startswith(":"):
            raise ValueError(f"feedback target {spec!r}: {hint}")
        host, port_text = text[1:close], text[close + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"feedback target {spec!r}: {hint}")
    if not host:
        raise ValueError(f"feedback target {spec!r}: missing host ({hint})")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"feedback target {spec!r}: port must be 1..65535 ({hint})")
    return host, int(port_text)


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second. Thread-safe."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError("token bucket needs rate > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


def _osc_value(value: Any) -> Any:
    """bool -> int 0/1; numbers (numpy's too) -> int/float; str as is; anything else -> str."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return value
    return str(value)


class FeedbackSender:
    """Sends OSC feedback to every target (``(host, port)`` tuples or ``"HOST:PORT"`` strings).

    Targets are resolved once, here (ValueError on a bad spec or an unknown host). ``ranges`` are
    the ``/sd/norm`` control ranges (same as the :class:`ControlSurface`'s); with
    ``echo_normalized`` numeric parameters are echoed on ``/sd/norm/<param>`` as well.
    """

    def __init__(
        self,
        targets: Sequence[tuple[str, int] | str],
        *,
        ranges: Mapping[str, Any] | None = None,
        echo_normalized: bool = True,
        status_hz: float = 2.0,
        error_rate: float = 5.0,
        error_burst: int = 10,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.monotonic,
        params: Mapping[str, ParamSpec] | None = None,
        bundle: bool = False,
        max_bundle_bytes: int = MAX_BUNDLE_BYTES,
    ) -> None:
        if status_hz <= 0:
            raise ValueError("status_hz must be > 0")
        self.transport: Transport = transport if transport is not None else UdpSender()
        self.targets: list[tuple[str, int]] = []
        self._dests: list[Dest] = []
        for target in targets:
            host, port = parse_target(target) if isinstance(target, str) else target
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"feedback target {target!r}: port must be 1..65535")
            if (host, port) in self.targets:
                continue
            self._dests.append(self.transport.resolve(host, port))
            self.targets.append((host, port))
        self.params: Mapping[str, ParamSpec] = PARAMS if params is None else dict(params)
        self.ranges = validate_ranges(ranges, self.params)
        self.echo_normalized = echo_normalized
        self.bundle = bool(bundle)
        self.max_bundle_bytes = int(max_bundle_bytes)
        self.status_interval = 1.0 / status_hz
        self._clock = clock
        self._next_status = clock()
        self._errors = TokenBucket(error_rate, error_burst, clock)
        self._lock = threading.Lock()
        self._pending_suppressed = 0
        self._warned: set[str] = set()
        self._counts = dict.fromkeys(
            ("sent", "send_errors", "errors_sent", "errors_suppressed", "skipped"), 0
        )

    # -- public ---------------------------------------------------------------------------------

    def send_params(self, changed: Mapping[str, Any]) -> None:
        """Echo changed parameters (name -> value) on their addresses."""
        out: list[bytes] = []
        for name, value in changed.items():
            spec = self.params.get(name)
            if spec is None and name.startswith("lfo/"):  # an LFO field: /sd/lfo/<param>/<field>
                self._encode(out, "/sd/" + name, _osc_value(value))
                continue
            if spec is None:
                self._skip(f"unknown parameter {name!r}")
                continue
            self._encode(out, spec.address, _osc_value(value))
            if self.echo_normalized and spec.kind in (int, float):
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    continue
                rng = self.ranges.get(name)
                norm_address = NORM_PREFIX + spec.address[len("/sd") :]
                self._encode(out, norm_address, float(normalize(spec, value, rng)))
        self._emit(out)

    def send_status(self, status: Mapping[str, Any]) -> None:
        """Send each entry on ``/sd/status/<key>`` (keys: lower-case letters, digits, ``_``)."""
        out: list[bytes] = []
        for key, value in status.items():
            if not isinstance(key, str) or not _STATUS_KEY_RE.match(key):
                self._skip(f"bad status key {key!r}")
                continue
            if value is None:
                continue
            if isinstance(value, tuple):  # several arguments, e.g. /sd/status/beat i f
                self._encode(out, STATUS_PREFIX + key, *(_osc_value(v) for v in value))
                continue
            self._encode(out, STATUS_PREFIX + key, _osc_value(value))
        self._emit(out)

    def maybe_send_status(self, get_status: Callable[[], Mapping[str, Any]]) -> bool:
        """Call ``get_status()`` and send it if a status update is due (``status_hz``)."""
        now = self._clock()
        with self._lock:
            if now < self._next_status:
                return False
            self._next_status += self.status_interval
            if self._next_status <= now:  # we were not called for a while: restart the cadence
                self._next_status = now + self.status_interval
        self.send_status(get_status())
        return True

    def send_error(self, address: str, reason: str) -> bool:
        """Reply ``/sd/error address reason`` unless rate-limited. Returns True if sent."""
        if not self._errors.take():
            with self._lock:
                self._counts["errors_suppressed"] += 1
                self._pending_suppressed += 1
                first = self._pending_suppressed == 1
            if first:
                log.info("rate-limiting /sd/error replies (latest: %s: %s)", address, reason)
            return False
        with self._lock:
            suppressed, self._pending_suppressed = self._pending_suppressed, 0
            self._counts["errors_sent"] += 1
        text = reason[:MAX_REASON_CHARS]
        if suppressed:
            text += f" ({suppressed} earlier errors suppressed)"
        self._send(ERROR_ADDRESS, address, text)
        return True

    def count_suppressed(self, n: int) -> None:
        """Count ``n`` error replies dropped before they reached :meth:`send_error` (a bounded
        queue overflowed); the next reply that goes out includes them in its count."""
        if n > 0:
            with self._lock:
                self._counts["errors_suppressed"] += n
                self._pending_suppressed += n

    def stats(self) -> dict[str, int]:
        """``sent`` datagrams, ``send_errors``, ``errors_sent``, ``errors_suppressed``, ``skipped``."""
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        try:
            self.transport.close()
        except OSError as exc:
            log.debug("closing the feedback transport: %s", exc)

    # -- internals ------------------------------------------------------------------------------

    def _skip(self, why: str) -> None:
        with self._lock:
            self._counts["skipped"] += 1
            first = why not in self._warned and len(self._warned) < 100
            if first:
                self._warned.add(why)
        # a bug in the caller would repeat every frame: warn once per distinct reason
        log.log(logging.WARNING if first else logging.DEBUG, "feedback: skipped %s", why)

    def _send(self, address: str, *args: Any) -> None:
        out: list[bytes] = []
        self._encode(out, address, *args)
        self._emit(out)

    def _encode(self, out: list[bytes], address: str, *args: Any) -> None:
        try:
            clean = [a.replace("\x00", "") if isinstance(a, str) else a for a in args]
            out.append(encode_message(address, *clean))
        except (ValueError, TypeError, OverflowError) as exc:
            self._skip(f"{address}: cannot encode {args!r}: {exc}")

    def _emit(self, messages: list[bytes]) -> None:
        """Send encoded messages: each as its own datagram, or (``bundle``) packed into as few
        bundles of at most ``max_bundle_bytes`` as they fit in, in order (a message that fits
        nowhere with another, or is alone, goes out plain)."""
        if not self.bundle or len(messages) < 2:
            datagrams = messages
        else:
            datagrams, group, size = [], [], BUNDLE_HEADER_BYTES
            for m in messages:
                if group and size + 4 + len(m) > self.max_bundle_bytes:
                    datagrams.append(encode_bundle(group) if len(group) > 1 else group[0])
                    group, size = [], BUNDLE_HEADER_BYTES
                group.append(m)
                size += 4 + len(m)
            if group:
                datagrams.append(encode_bundle(group) if len(group) > 1 else group[0])
        for data in datagrams:
            for dest in self._dests:
                try:
                    self.transport.send(data, dest)
                except OSError as exc:
                    with self._lock:
                        self._counts["send_errors"] += 1
                    log.debug("feedback send of %d bytes to %s failed: %s", len(data), dest, exc)
                else:
                    with self._lock:
                        self._counts["sent"] += 1


class FeedbackQueue:
    """The bounded hand-over from every producer (render loop, OSC receiver, source worker) to
    the feedback thread.

    Values are latest-wins per name (``params``) and per key (``status``): a fader moved 2,000
    times a second costs one slot, and the feedback thread sends its newest value. Error replies
    are kept in order up to ``max_errors``; more are dropped and counted (the sender's token
    bucket would refuse them anyway). ``put((kind, payload))`` takes the same items a plain queue
    did: ``("params", {name: value})``, ``("status", {key: value})``, ``("error", (address,
    reason))``, and ``("errors_dropped", n)`` for rejections a producer counted without passing
    them on (they are reported like the ones dropped here). Thread-safe; ``put`` never blocks.
    """

    def __init__(self, max_errors: int = 64) -> None:
        self.max_errors = max_errors
        self._cond = threading.Condition()
        self._params: dict[str, Any] = {}
        self._status: dict[str, Any] = {}
        self._errors: deque[tuple[str, str]] = deque()
        self._dropped = 0
        self.dropped_total = 0
        self._unknown: set[str] = set()

    def put(self, item: tuple[str, Any]) -> None:
        kind, payload = item
        with self._cond:
            if kind == "params":
                for name, value in payload.items():
                    self._params.pop(name, None)  # re-insert: send order follows the latest change
                    self._params[name] = value
            elif kind == "status":
                self._status.update(payload)
            elif kind == "error":
                if len(self._errors) >= self.max_errors:
                    self._dropped += 1
                    self.dropped_total += 1
                    return
                self._errors.append((str(payload[0]), str(payload[1])))
            elif kind == "errors_dropped":  # rejections a producer counted but did not pass on
                self._dropped += int(payload)
                self.dropped_total += int(payload)
            else:
                first = kind not in self._unknown
                self._unknown.add(kind)
                if first:  # a caller's bug: say so once, never raise into its thread
                    log.warning("feedback queue: unknown item kind %r dropped", kind)
                return
            self._cond.notify()

    def take(self, timeout: float | None = None) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, str]], int]:
        """Wait up to ``timeout`` for something, then take everything: ``(params, status, errors,
        errors dropped since the last take)``."""
        with self._cond:
            if not (self._params or self._status or self._errors or self._dropped):
                self._cond.wait(timeout)
            params, self._params = self._params, {}
            status, self._status = self._status, {}
            errors = list(self._errors)
            self._errors.clear()
            dropped, self._dropped = self._dropped, 0
        return params, status, errors, dropped

    def __len__(self) -> int:
        with self._cond:
            return len(self._params) + len(self._status) + len(self._errors)
