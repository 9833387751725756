"""The socket adapter of the control layer: the only module here that touches sockets.

:class:`OscServer` receives OSC over UDP on ONE thread: ``recv -> decode -> validate -> callback``.
It does nothing slow and never dies on any input: every datagram is handled inside its own
``try``, counted, and logged at DEBUG only (a flood of garbage must not flood the log either).
It works in short periodic slices (``duty``), so a flood cannot take the GIL from the render loop.

:class:`UdpSender` is the non-blocking datagram sender :mod:`bridge.control.feedback` uses.

Callback contract: ``on_batch(commands)`` and ``on_error(address, reason)`` run on the receive
thread. They must return at once -- put the batch on the render loop's bounded command queue (or
latest-wins mailbox) and return; never wait for a frame, a lock held by the render loop, the disk
or the network there. Anything slow in a callback delays every later message and, under load,
makes the kernel drop datagrams. An exception raised by a callback is logged and counted
(``callback_errors``); the server keeps running. The optional ``on_slice_end()`` runs on the same
thread after each receive slice, once its parameter changes have gone to ``on_batch`` (the child
process of :mod:`bridge.control.isolated` sends its rejections and counters then).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

from bridge.control.codec import MAX_PACKET_BYTES
from bridge.control.surface import Batch, Command, ControlSurface, Rejected, SetParams

log = logging.getLogger("bridge.control.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9400
DEFAULT_RCVBUF = 4 * 1024 * 1024
_DRAIN_MAX = 512  # datagrams handled per wake-up before checking for stop again
_BUDGET_CHECK = 16  # datagrams between two looks at the clock
RECEIVE_PERIOD_S = 0.01  # the receive thread works at most once per period...
DEFAULT_DUTY = 0.15  # ...for at most this share of it (wall clock), then leaves the GIL alone

#: what :meth:`OscServer.stats` counts
COUNTERS = ("received", "accepted", "rejected", "malformed", "ignored", "callback_errors", "internal_errors",
            "throttled")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# ----------------------------------------------------------------------------------------------
# sender allow-list


@dataclass(frozen=True)
class AllowRule:
    """One allow-list entry: a network (a single IP is a /32 or /128) and optionally a port."""

    network: IPNetwork
    port: int | None = None

    def matches(self, ip: IPAddress, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        return ip.version == self.network.version and ip in self.network


def parse_allow(spec: str) -> AllowRule:
    """Parse ``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or a CIDR network (``10.0.0.0/8``, ``fd00::/8``).

    Raises ValueError with the accepted forms in the message. Host names are not accepted (an
    allow-list must not depend on DNS)."""
    forms = "expected IP, IP:PORT, [IPv6]:PORT or a CIDR network like 192.168.1.0/24"
    text = spec.strip()
    if not text:
        raise ValueError(f"empty allow-list entry: {forms}")
    port: int | None = None
    host = text
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"allow-list entry {spec!r}: missing ']' ({forms})")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"allow-list entry {spec!r}: {forms}")
            port = _parse_port(rest[1:], spec)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _parse_port(port_text, spec)
    try:
        if "/" in host:
            network: IPNetwork = ipaddress.ip_network(host, strict=False)
        else:
            network = ipaddress.ip_network(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"allow-list entry {spec!r}: {forms}") from None
    return AllowRule(network, port)


def _parse_port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"allow-list entry {spec!r}: port must be 1..65535")
    return int(text)


def _peer_ip(host: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# ----------------------------------------------------------------------------------------------
# receiver


class ReceiverLifecycle:
    """What every OSC receiver shares: ``with`` support, :attr:`address` and :attr:`running`
    from ``host``, ``port`` and the receiving thread, around the subclass's ``start``/``stop``."""

    host: str
    port: int
    _thread: threading.Thread | None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 2.0) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one after ``start()`` with port 0."""
        return (self.host, self.port)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class OscServer(ReceiverLifecycle):
    """OSC-over-UDP receiver for the control surface.

    ``allow``: sender allow-list entries (see :func:`parse_allow`); ``None`` or empty accepts every
    sender. Datagrams from other senders are dropped unanswered and counted as ``ignored``.
    ``port=0`` picks a free port (see :attr:`address`). Counters (:meth:`stats`) satisfy
    ``received == accepted + rejected + malformed + ignored``; a packet that validates but holds
    nothing to do (a button release, an empty bundle) is accepted and ``on_batch`` is not called.

    ``duty``: the receive thread wakes at most once per 10 ms and works for at most this share of
    it (wall clock), then sleeps to the end of the period, so it competes with the render loop
    for the GIL at most that share of the time and never in a tight stream of wake-ups. Datagrams
    that arrive meanwhile wait in the socket buffer (at most one period, 10 ms, when it is not
    full); under a flood the kernel drops what does not fit (:meth:`kernel_drops`) and
    ``throttled`` counts the periods cut short. A steady 2,000 messages/s from a control surface
    needs about 2 % of the time, far below it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        on_batch: Callable[[list[Command]], None],
        on_error: Callable[[str, str], None] | None = None,
        allow: Sequence[str] | None = None,
        *,
        surface: ControlSurface | None = None,
        rcvbuf_bytes: int = DEFAULT_RCVBUF,
        duty: float = DEFAULT_DUTY,
        on_slice_end: Callable[[], None] | None = None,
    ) -> None:
        if not 0.0 < duty <= 1.0:
            raise ValueError("duty must be in (0, 1]")
        self.host = host
        self.duty = duty
        self.port = port
        self.on_batch = on_batch
        self.on_error = on_error
        self.on_slice_end = on_slice_end
        self.allow_rules = [parse_allow(entry) for entry in (allow or [])]
        self.surface = surface if surface is not None else ControlSurface()
        self.rcvbuf_requested = rcvbuf_bytes
        self.rcvbuf_granted = 0
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._sock: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._drain_on_stop = True  # False once a stop was asked for from inside a callback
        # parameter changes gathered during one receive slice (None outside a slice)
        self._slice_params: dict[str, Any] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and start the receive thread. Raises OSError naming the address if it cannot bind."""
        if self._thread is not None:
            raise RuntimeError("OscServer already started")
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_DGRAM
            )[0]
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve OSC listen host {self.host!r}: {exc}") from exc
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.rcvbuf_granted = _enlarge_rcvbuf(sock, self.rcvbuf_requested)
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno,
                f"cannot listen for OSC on {self.host}:{self.port}: {exc.strerror or exc}",
            ) from exc
        sock.setblocking(False)
        self._sock = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping.clear()
        self._drain_on_stop = True
        bound = sock.getsockname()
        self.port = bound[1]
        # Linux reports double the requested size (bookkeeping overhead), capped by rmem_max.
        if self.rcvbuf_granted < self.rcvbuf_requested:
            log.warning(
                "OSC socket receive buffer is %d bytes (asked %d); on Linux raise "
                "net.core.rmem_max to absorb bursts without kernel drops",
                self.rcvbuf_granted,
                self.rcvbuf_requested,
            )
        log.info(
            "OSC listening on %s:%d (receive buffer %d bytes%s)",
            self.host,
            self.port,
            self.rcvbuf_granted,
            ", allow-list active" if self.allow_rules else "",
        )
        self._thread = threading.Thread(target=self._run, name="osc-receive", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the receive thread, handle what is still in the socket buffer, close the socket.

        Datagrams that reached the socket before the stop are handled (at most ``_DRAIN_MAX``,
        on the calling thread, callbacks included) so a command sent just before a stop is not
        lost. Called from inside a callback (on the receive thread) it only asks the loop to end;
        the socket is closed by the next ``stop()`` from another thread (e.g. at shutdown)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        if thread is threading.current_thread():  # called from a callback: the loop will exit
            self._drain_on_stop = False  # what arrives after this stop is not handled
            return
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"\x00")
            except OSError:
                pass
        thread.join(timeout)
        if thread.is_alive():
            log.error("OSC receive thread did not stop within %.1f s", timeout)
        elif self._drain_on_stop:
            self._drain_rest()
        for s in (self._sock, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._sock = self._wake_r = self._wake_w = None
        self._thread = None

    # -- counters -------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters (safe from any thread: one C-level copy under the GIL).
        ``received`` is counted before the outcome, so it may lead the others by one."""
        return dict(self._counts)

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped on this socket (Linux ``/proc/net/udp*``), else None."""
        inode = self.socket_inode
        return None if inode is None else kernel_drops_of(inode)

    @property
    def socket_inode(self) -> int | None:
        """The socket's inode (what ``/proc/net/udp`` lists it by), None when not listening."""
        sock = self._sock
        if sock is None:
            return None
        try:
            return os.fstat(sock.fileno()).st_ino
        except OSError:
            return None

    def _count(self, key: str) -> int:
        # only the receive thread writes the counters: no lock on the per-datagram path
        counts = self._counts
        counts[key] += 1
        return counts[key]

    # -- receive loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        sock, wake = self._sock, self._wake_r
        assert sock is not None and wake is not None
        buf = bytearray(MAX_PACKET_BYTES + 4)
        view = memoryview(buf)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        sel.register(wake, selectors.EVENT_READ)
        # This thread competes with the render loop for the GIL, and on a busy machine every
        # hand-over of the GIL costs the render loop far more than the work done in between.
        # So it works in slices: wake (on data), drain for at most duty x period of wall clock,
        # then sleep to the end of the period while datagrams gather in the socket buffer (or,
        # under a flood, are dropped by the kernel, counted).
        active = self.duty * RECEIVE_PERIOD_S
        try:
            while not self._stopping.is_set():
                try:
                    sel.select()
                except OSError as exc:  # pragma: no cover - select on a live socket pair
                    log.debug("select failed: %s", exc)
                    continue
                start = time.monotonic()
                # parameter changes of one slice are handed over as one batch (latest wins, as in
                # the inbox): one hand-over per slice instead of one per datagram
                self._slice_params = {}
                try:
                    for i in range(_DRAIN_MAX):
                        if self._stopping.is_set():
                            break
                        if i % _BUDGET_CHECK == _BUDGET_CHECK - 1 and time.monotonic() - start >= active:
                            self._count("throttled")
                            break
                        try:
                            n, peer = sock.recvfrom_into(buf)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError as exc:
                            log.debug("recvfrom failed: %s", exc)
                            break
                        self._handle(bytes(view[:n]), peer)
                finally:
                    self._end_slice()
                rest = start + RECEIVE_PERIOD_S - time.monotonic()
                if rest > 0:
                    self._stopping.wait(rest)
        except Exception:  # pragma: no cover - the per-datagram handler catches everything
            log.exception("OSC receive loop crashed")
        finally:
            sel.close()

    def _drain_rest(self) -> None:
        """After the thread has ended: handle what is still waiting in the socket buffer."""
        sock = self._sock
        if sock is None:
            return
        buf = bytearray(MAX_PACKET_BYTES + 4)
        view = memoryview(buf)
        self._slice_params = {}
        try:
            for _ in range(_DRAIN_MAX):
                try:
                    n, peer = sock.recvfrom_into(buf)
                except OSError:  # BlockingIOError: nothing left
                    break
                self._handle(bytes(view[:n]), peer)
        finally:
            self._end_slice()

    def _end_slice(self) -> None:
        """Hand over the slice's parameter changes, then tell ``on_slice_end``."""
        self._flush_params()
        self._slice_params = None
        if self.on_slice_end is not None:
            self._call(self.on_slice_end)

    def _handle(self, data: bytes, peer: Any) -> None:
        try:
            self._count("received")
            if self.allow_rules and not self._allowed(peer):
                self._count("ignored")
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("ignored %d bytes from %s (not in the allow-list)", len(data), peer)
                return
            try:
                result: Batch | Rejected = self.surface.process(data)
            except Exception:
                first = self._count("internal_errors") == 1
                log.log(
                    logging.ERROR if first else logging.DEBUG,
                    "internal error validating %d bytes from %s",
                    len(data),
                    peer,
                    exc_info=True,
                )
                result = Rejected("", "internal error while validating the packet")
            if isinstance(result, Rejected):
                self._count("malformed" if result.malformed else "rejected")
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("rejected from %s: %s: %s", peer, result.address, result.reason)
                if self.on_error is not None:
                    self._call(self.on_error, result.address, result.reason)
                return
            self._count("accepted")
            if not result:
                return
            pending = self._slice_params
            if pending is not None and all(type(cmd) is SetParams for cmd in result):
                for cmd in result:
                    for name, value in cmd.values.items():
                        pending.pop(name, None)  # re-insert: the order follows the latest arrival
                        pending[name] = value
                return
            self._flush_params()  # what arrived before this command goes first
            self._call(self.on_batch, result)
        except Exception:  # pragma: no cover - defensive: nothing may escape the loop
            log.debug("unexpected error handling a datagram", exc_info=True)

    def _flush_params(self) -> None:
        pending = self._slice_params
        if pending:
            self._slice_params = {}
            self._call(self.on_batch, [SetParams(pending)])

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            first = self._count("callback_errors") == 1  # a traceback once, then debug only
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "OSC callback %s raised",
                getattr(fn, "__name__", fn),
                exc_info=True,
            )

    def _allowed(self, peer: Any) -> bool:
        ip = _peer_ip(str(peer[0]))
        if ip is None:
            return False
        port = int(peer[1])
        return any(rule.matches(ip, port) for rule in self.allow_rules)


def _enlarge_rcvbuf(sock: socket.socket, requested: int) -> int:
    """Ask for ``requested`` bytes of receive buffer, halving on refusal (macOS refuses sizes
    over its limit instead of capping them); return what the kernel reports it granted."""
    size = requested
    while size >= 64 * 1024:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            break
        except OSError as exc:
            log.debug("SO_RCVBUF %d refused: %s", size, exc)
            size //= 2
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def kernel_drops_of(inode: int) -> int | None:
    """Datagrams the kernel dropped on the UDP socket with this inode (Linux), else None."""
    wanted = str(inode)
    try:
        for path in ("/proc/net/udp", "/proc/net/udp6"):
            if not os.path.exists(path):
                continue
            with open(path, encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    parts = line.split()
                    if len(parts) >= 13 and parts[9] == wanted:
                        return int(parts[-1])
    except (OSError, ValueError):
        return None
    return None


# ----------------------------------------------------------------------------------------------
# sender


class UdpSender:
    """Non-blocking UDP datagram sender, one socket per address family, thread-safe.

    :meth:`send` never blocks; it raises OSError (``BlockingIOError`` when the socket buffer is
    full, ``gaierror`` never: destinations are resolved up front by :meth:`resolve`)."""

    def __init__(self) -> None:
        self._socks: dict[int, socket.socket] = {}
        self._lock = threading.Lock()

    @staticmethod
    def resolve(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
        """Resolve a destination once: (address family, socket address). Raises ValueError."""
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        except (socket.gaierror, UnicodeError) as exc:
            raise ValueError(f"cannot resolve feedback host {host!r}: {exc}") from None
        return family, sockaddr

    def send(self, data: bytes, dest: tuple[int, tuple[Any, ...]]) -> None:
        family, sockaddr = dest
        sock = self._socks.get(family)
        if sock is None:
            with self._lock:
                sock = self._socks.get(family)
                if sock is None:
                    sock = socket.socket(family, socket.SOCK_DGRAM)
                    sock.setblocking(False)
                    if family == socket.AF_INET:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                    self._socks[family] = sock
        sock.sendto(data, sockaddr)

    def close(self) -> None:
        with self._lock:
            for sock in self._socks.values():
                sock.close()
            self._socks.clear()
