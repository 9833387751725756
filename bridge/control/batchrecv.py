"""Reading many UDP datagrams per system call, without letting go of the GIL between them.

Python's ``socket.recvfrom_into`` reads one datagram per call and releases the GIL around each
call. The render loop (another thread of the same process) takes the GIL back at every such
release, so a control surface sending 2,000 messages a second made the render thread block and
wake about a thousand times a second: measured on a 2-core machine, about 5 % of its frame rate
for nothing but GIL hand-overs.

:class:`MultiReceiver` uses Linux's ``recvmmsg(2)`` with ``MSG_DONTWAIT`` through
:class:`ctypes.PyDLL` (which keeps the GIL during the call): one call fills up to ``batch``
datagrams and returns at once, so draining a burst costs one GIL hand-over, not one per datagram.
The waiting itself (``select``) still releases the GIL as before. :class:`LoopReceiver` is the
portable equivalent (a loop of ``recvfrom_into``), used where ``recvmmsg`` does not exist (macOS,
Windows) or cannot be set up. Both return ``(data, peer)`` pairs with ``peer`` as
``socket.recvfrom`` gives it: ``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)`` for
IPv6. A datagram longer than ``size`` is cut to ``size`` bytes by both, as ``recvfrom_into`` does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import socket
import sys
from typing import Any

log = logging.getLogger("bridge.control.batchrecv")

_MSG_DONTWAIT = 0x40  # Linux
_NAME_BYTES = 128  # sizeof(struct sockaddr_storage)
_AGAIN = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR}


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),  # socklen_t
        ("msg_iov", ctypes.POINTER(_IOVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


class LoopReceiver:
    """Up to ``batch`` datagrams per :meth:`receive`, one ``recvfrom_into`` each (portable)."""

    kind = "recvfrom"

    def __init__(self, sock: socket.socket, size: int, batch: int = 16) -> None:
        self.sock = sock
        self.size = int(size)
        self.batch = int(batch)
        self._buf = bytearray(self.size)
        self._view = memoryview(self._buf)

    def receive(self) -> list[tuple[bytes, Any]]:
        """What is waiting, at most ``batch`` datagrams; [] when nothing is. OSError other than
        "would block" is raised."""
        out = []
        for _ in range(self.batch):
            try:
                n, peer = self.sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                break
            out.append((bytes(self._view[:n]), peer))
        return out


class MultiReceiver:
    """Up to ``batch`` datagrams per :meth:`receive` with one ``recvmmsg`` call (Linux)."""

    kind = "recvmmsg"

    def __init__(self, sock: socket.socket, size: int, batch: int = 16) -> None:
        if not sys.platform.startswith("linux"):
            raise OSError("recvmmsg is Linux only")
        path = ctypes.util.find_library("c")
        libc = ctypes.PyDLL(path, use_errno=True)  # PyDLL: the GIL is kept during the call
        fn = libc.recvmmsg
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(_MMsgHdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        fn.restype = ctypes.c_int
        self._fn = fn
        self.sock = sock
        self.size = int(size)
        self.batch = int(batch)
        self._data = ctypes.create_string_buffer(self.size * self.batch)
        self._names = ctypes.create_string_buffer(_NAME_BYTES * self.batch)
        self._iov = (_IOVec * self.batch)()
        self._msgs = (_MMsgHdr * self.batch)()
        base, names = ctypes.addressof(self._data), ctypes.addressof(self._names)
        for i in range(self.batch):
            self._iov[i].iov_base = base + i * self.size
            self._iov[i].iov_len = self.size
            hdr = self._msgs[i].msg_hdr
            hdr.msg_name = names + i * _NAME_BYTES
            hdr.msg_namelen = _NAME_BYTES
            hdr.msg_iov = ctypes.pointer(self._iov[i])
            hdr.msg_iovlen = 1
        self._raw = memoryview(self._data).cast("B")
        self._raw_names = memoryview(self._names).cast("B")
        self._probe()

    def _probe(self) -> None:
        """Call recvmmsg once on an empty socket of our own: it must say "nothing waiting" (a
        kernel or libc without it raises here, and the portable loop is used instead)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            n = self._fn(probe.fileno(), self._msgs, 1, _MSG_DONTWAIT, None)
            err = ctypes.get_errno()
        if n != -1 or err not in _AGAIN:
            raise OSError(err, f"recvmmsg probe returned {n} ({errno.errorcode.get(err, err)})")

    def receive(self) -> list[tuple[bytes, Any]]:
        """What is waiting, at most ``batch`` datagrams; [] when nothing is. OSError other than
        "would block" is raised."""
        n = self._fn(self.sock.fileno(), self._msgs, self.batch, _MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in _AGAIN:
                return []
            raise OSError(err, f"recvmmsg: {errno.errorcode.get(err, err)}")
        out = []
        size, raw, names = self.size, self._raw, self._raw_names
        for i in range(n):
            msg = self._msgs[i]
            start = i * size
            out.append((bytes(raw[start : start + min(msg.msg_len, size)]),
                        _peer(names[i * _NAME_BYTES : (i + 1) * _NAME_BYTES], msg.msg_hdr.msg_namelen)))
            msg.msg_hdr.msg_namelen = _NAME_BYTES  # the kernel wrote the length it used
        return out


def _peer(name: memoryview, length: int) -> Any:
    """A ``struct sockaddr`` as ``socket.recvfrom`` reports it."""
    family = int.from_bytes(name[0:2], sys.byteorder)
    port = int.from_bytes(name[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, bytes(name[4:8])), port
    if family == socket.AF_INET6:
        host = socket.inet_ntop(socket.AF_INET6, bytes(name[8:24]))
        flowinfo = int.from_bytes(name[4:8], "big")
        scope = int.from_bytes(name[24:28], sys.byteorder)
        if scope:
            try:
                host = f"{host}%{socket.if_indextoname(scope)}"
            except OSError:
                host = f"{host}%{scope}"
        return host, port, flowinfo, scope
    return f"family-{family}", 0


def make_receiver(sock: socket.socket, size: int, batch: int = 16) -> MultiReceiver | LoopReceiver:
    """The batched receiver where the platform has one, else the portable loop."""
    try:
        return MultiReceiver(sock, size, batch)
    except (OSError, AttributeError, TypeError, ValueError) as exc:
        log.debug("recvmmsg unavailable (%s): reading one datagram per call", exc)
        return LoopReceiver(sock, size, batch)
