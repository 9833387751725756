"""OSC received in a child process: the render loop's process never spends its interpreter lock on
a datagram.

A Python process has one interpreter lock (GIL). With the receiver on a thread, every datagram
(the ``recvfrom``, decoding, validation) takes that lock from the render loop for a moment, and
each hand-over costs the render loop more than the work done in between: a TouchDesigner panel
sending 2,000 messages a second costs a CPU render loop several per cent of its frame rate, a
flood far more. :class:`IsolatedOscServer` runs the same :class:`~bridge.control.server.OscServer`
(same socket options, allow-list, duty cycle, decoding and validation, same counters) in a small
child process (:func:`child_main`, about 16 MB, no torch) and hands the
daemon only what survives it: one coalesced batch of parameter changes per receive slice (at most
100 a second), the discrete commands in order, and the first few rejections of each slice.

Protocol, child -> parent, on the child's stdout: frames of a 4-byte big-endian length and a
pickled tuple (a private pipe between two processes of the same program):

* ``("ready", port, rcvbuf_granted, socket_inode)`` or ``("fail", errno, text)`` once, at start;
* ``("batch", commands, counters)``: what ``on_batch`` gets, in arrival order;
* ``("errors", [(address, reason), ...], dropped, counters)``: rejections of one slice, at most
  :data:`MAX_ERRORS_PER_SLICE` (the rest counted as ``dropped``);
* ``("stats", counters)``: counters that changed without a batch (ignored senders, say);
* ``("log", level, logger, text)``: the child's log records, re-emitted by the parent's logger.

Parent -> child: the settings, pickled, on stdin; then nothing. End of stdin means stop: the child
stops receiving, handles what is still in its socket buffer, sends it, and exits. So a parent that
dies (even by SIGKILL) never leaves a child behind, and a stop loses nothing that reached the
socket before it. The child ignores SIGINT (Ctrl-C in a terminal reaches the whole process group;
the parent decides when to stop).

If the child dies during the show (killed, out of memory), the parent logs a warning, starts a
new one on the same port and counts it (``restarts``); controllers keep sending to the same
address. Callbacks run on the parent's ``osc-receive`` thread under the same contract as
:class:`OscServer`'s.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO

from bridge.control.server import (
    COUNTERS,
    DEFAULT_DUTY,
    DEFAULT_RCVBUF,
    OscServer,
    ReceiverLifecycle,
    kernel_drops_of,
    parse_allow,
)
from bridge.control.surface import Command, ControlSurface

log = logging.getLogger("bridge.control.server")

_LEN = struct.Struct(">I")
#: rejections reported per receive slice (at most 100 slices a second); the rest are counted
MAX_ERRORS_PER_SLICE = 8
START_TIMEOUT_S = 10.0
#: the child's scheduling niceness (POSIX): under a flood on a machine with few cores, the CPU goes
#: to the render loop first and the kernel drops what the child has no time for
CHILD_NICE = 10
_RESTART_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)  # between restarts of a child that keeps dying
STABLE_S = 10.0  # a child that ran this long before it died starts the pauses over
_MAX_FRAME = 64 << 20
# the child imports from exactly the parent's import path (the same bridge, whatever the working
# directory holds)
_CHILD_CODE = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from bridge.control.isolated import child_main; raise SystemExit(child_main())"
)


# ----------------------------------------------------------------------------------------------
# parent


class IsolatedOscServer(ReceiverLifecycle):
    """:class:`~bridge.control.server.OscServer`'s interface, the receiving done in a child process.

    Same arguments as :class:`OscServer`, plus ``on_errors_dropped(n)``: called with the number of
    rejections of a slice beyond the first :data:`MAX_ERRORS_PER_SLICE` (each of those gets
    ``on_error``). ``surface`` must be a :class:`ControlSurface` (the child builds a plain one
    from its parameter table and ranges). :attr:`pid` is the child's process id while one runs
    (None between a child's death and its replacement). Differences from :class:`OscServer`: no
    ``on_slice_end``; a slice's rejections reach ``on_error`` after its batches; :meth:`stats`
    adds up the counters of every child this object started.
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
        on_errors_dropped: Callable[[int], None] | None = None,
    ) -> None:
        if not 0.0 < duty <= 1.0:
            raise ValueError("duty must be in (0, 1]")
        self.host = host
        self.port = port
        self.duty = duty
        self.on_batch = on_batch
        self.on_error = on_error
        self.on_errors_dropped = on_errors_dropped
        self.allow = list(allow or [])
        self.allow_rules = [parse_allow(entry) for entry in self.allow]  # checked here, applied there
        self.surface = surface if surface is not None else ControlSurface()
        self.rcvbuf_requested = rcvbuf_bytes
        self.rcvbuf_granted = 0
        self.socket_inode: int | None = None
        self._child_counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)  # the live child's, as it last said
        self._base_counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)  # the ended children's
        self._counts = {"callback_errors": 0, "restarts": 0}
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()  # a new one per start(): an old hand-over thread keeps its own
        self._lock = threading.Lock()  # guards _proc and the counters across a restart and a stop

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the child and wait until it listens. Raises OSError naming the address when it
        cannot bind (the same error :class:`OscServer` raises)."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("OscServer already started")
        stopping = threading.Event()
        proc = self._spawn(self.port)
        with self._lock:
            self._proc = proc
        self._stopping = stopping
        log.info("OSC is received in its own process (pid %d)", proc.pid)
        self._thread = threading.Thread(target=self._run, args=(stopping, proc), name="osc-receive", daemon=True)
        self._thread.start()

    def _settings(self, port: int) -> dict[str, Any]:
        return {
            "host": self.host, "port": port, "allow": self.allow, "rcvbuf": self.rcvbuf_requested, "duty": self.duty,
            "params": self.surface.params, "ranges": dict(self.surface.ranges),
            "log_level": log.getEffectiveLevel(),
        }

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        """Start a child listening on ``port`` and read its first frame (ready or fail)."""
        # A session (POSIX) / process group (Windows) of its own: a signal meant for the daemon's
        # group (Ctrl-C, `timeout`, `kill -- -PGID`) does not end the receiver while the daemon is
        # still stopping; the end of its stdin does. On Windows also a lower priority, no console.
        extra: dict[str, Any] = {"start_new_session": True}
        if sys.platform == "win32":
            extra = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.BELOW_NORMAL_PRIORITY_CLASS
                     | subprocess.CREATE_NO_WINDOW}
        proc = subprocess.Popen(
            # '' in the path means the parent's working directory: pass it as that directory
            [sys.executable, "-c", _CHILD_CODE, json.dumps([p or os.getcwd() for p in sys.path])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            close_fds=True, **extra,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(pickle.dumps(self._settings(port), protocol=pickle.HIGHEST_PROTOCOL))
            proc.stdin.flush()
            first = _read_frame_timeout(proc, START_TIMEOUT_S)
        except Exception:
            _end(proc)
            raise
        while first is not None and first[0] == "log":
            _relog(first)
            first = _read_frame_timeout(proc, START_TIMEOUT_S)
        if first is None or first[0] != "ready":
            _end(proc)
            if first is not None and first[0] == "fail":
                raise OSError(first[1], first[2]) if first[1] is not None else OSError(first[2])
            raise OSError(f"the OSC receiver process did not start (exit code {proc.poll()})")
        _, self.port, self.rcvbuf_granted, self.socket_inode = first
        return proc

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the child and return once everything it received has been handed to the
        callbacks (it handles what is still in its socket buffer first). Called from inside a
        callback it only asks for the stop; the hand-over thread ends the child."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.stdin is not None:
            try:
                proc.stdin.close()  # end of stdin: the child drains, reports and exits
            except OSError:
                pass
        if thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive() and proc is not None and proc.poll() is None:
            log.error("OSC receiver process did not stop within %.1f s; killing it", timeout)
            proc.kill()  # its stdout ends, and so does the hand-over thread
            thread.join(2.0)
        if thread.is_alive():  # a callback that never returns: start() stays refused
            log.error("the OSC hand-over thread did not stop (a callback blocked?)")
            return
        self._thread = None

    @property
    def pid(self) -> int | None:
        """The live child's process id (None when stopped or between a death and a restart)."""
        proc = self._proc
        return None if proc is None else proc.pid

    # -- counters -------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """The child's counters (as of its last report, which comes before the callbacks of the
        next batch), plus ``callback_errors`` raised here and ``restarts`` of the child."""
        with self._lock:
            out = {k: self._base_counts.get(k, 0) + v for k, v in self._child_counts.items()}
        out["callback_errors"] = out.get("callback_errors", 0) + self._counts["callback_errors"]
        out["restarts"] = self._counts["restarts"]
        return out

    def _fold_counts(self) -> None:
        """A child has ended: keep its counters (the next one starts from zero)."""
        with self._lock:
            for k, v in self._child_counts.items():
                self._base_counts[k] = self._base_counts.get(k, 0) + v
            self._child_counts = dict.fromkeys(COUNTERS, 0)

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped on the child's socket (Linux ``/proc/net/udp*``), else None."""
        inode = self.socket_inode
        return None if inode is None or self._proc is None else kernel_drops_of(inode)

    # -- the hand-over thread -------------------------------------------------------------------

    def _run(self, stopping: threading.Event, proc: subprocess.Popen[bytes]) -> None:
        restarts_in_a_row = 0
        try:
            while True:
                began = time.monotonic()
                assert proc.stdout is not None
                self._pump(proc.stdout)
                if stopping.is_set():
                    return
                # the child died during the show: start another on the same port (at once, unless
                # it keeps dying: then with growing pauses)
                with self._lock:
                    if self._proc is proc:
                        self._proc = None
                rc = _end(proc)
                self._fold_counts()
                if time.monotonic() - began >= STABLE_S:
                    restarts_in_a_row = 0
                delay = _RESTART_DELAYS_S[min(restarts_in_a_row, len(_RESTART_DELAYS_S) - 1)]
                log.warning("OSC receiver process %d ended (exit code %s); starting another on %s:%d in %.1f s",
                            proc.pid, rc, self.host, self.port, delay)
                new: subprocess.Popen[bytes] | None = None
                while new is None and not stopping.wait(delay):
                    try:
                        new = self._spawn(self.port)
                    except OSError as exc:
                        delay = _RESTART_DELAYS_S[-1]
                        log.error("cannot restart the OSC receiver process: %s; retrying in %.0f s", exc, delay)
                if new is None:
                    return
                proc = new
                with self._lock:
                    stopped = stopping.is_set()
                    if not stopped:
                        self._proc = new
                if stopped:
                    return
                self._counts["restarts"] += 1
                restarts_in_a_row += 1
                log.info("OSC receiver process %d listening on %s:%d again", new.pid, self.host, self.port)
        except Exception:  # pragma: no cover - a bug here must not leave a child behind
            log.exception("OSC hand-over from the receiver process failed")
        finally:
            with self._lock:
                if self._proc is proc:
                    self._proc = None
            _end(proc)
            self._fold_counts()

    def _pump(self, stream: BinaryIO) -> None:
        """Hand every frame to the callbacks until the child's stdout ends."""
        while True:
            try:
                frame = _read_frame(stream)
            except Exception as exc:  # a cut or foreign frame: this child is no use any more
                log.error("OSC receiver process: broken hand-over (%s)", exc)
                return
            if frame is None:
                return
            try:
                self._dispatch(frame)
            except Exception:  # a malformed frame: skip it, keep the hand-over going
                log.exception("OSC receiver process: bad frame %r", frame[0])

    def _dispatch(self, frame: tuple[Any, ...]) -> None:
        kind = frame[0]
        if kind == "batch":
            self._call(self.on_batch, frame[1])
            self._child_counts = frame[2]
        elif kind == "errors":
            if self.on_error is not None:
                for address, reason in frame[1]:
                    self._call(self.on_error, address, reason)
            if frame[2] and self.on_errors_dropped is not None:
                self._call(self.on_errors_dropped, frame[2])
            self._child_counts = frame[3]
        elif kind == "stats":
            self._child_counts = frame[1]
        elif kind == "log":
            _relog(frame)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self._counts["callback_errors"] += 1
            first = self._counts["callback_errors"] == 1  # a traceback once, then debug only
            log.log(logging.WARNING if first else logging.DEBUG, "OSC callback %s raised",
                    getattr(fn, "__name__", fn), exc_info=True)


def _read_frame(stream: BinaryIO) -> tuple[Any, ...] | None:
    head = stream.read(_LEN.size)
    if not head:
        return None
    if len(head) < _LEN.size:
        raise EOFError("cut frame header")
    (n,) = _LEN.unpack(head)
    if n > _MAX_FRAME:
        raise ValueError(f"frame of {n} bytes")
    body = stream.read(n)
    if len(body) < n:
        raise EOFError("cut frame")
    frame = pickle.loads(body)  # our own child, on a private pipe
    if not isinstance(frame, tuple) or not frame:
        raise ValueError("not a frame")
    return frame


def _read_frame_timeout(proc: subprocess.Popen[bytes], timeout: float) -> tuple[Any, ...] | None:
    """The child's next frame, or None when it ends or says nothing for ``timeout`` seconds."""
    assert proc.stdout is not None
    box: list[tuple[Any, ...] | None | BaseException] = []
    reader = threading.Thread(target=lambda: box.append(_safe_read(proc.stdout)), name="osc-start", daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        return None  # the caller ends the child, which ends the reader
    got = box[0]
    if isinstance(got, BaseException):
        return None
    return got


def _safe_read(stream: Any) -> tuple[Any, ...] | None | BaseException:
    try:
        return _read_frame(stream)
    except Exception as exc:
        return exc


def _relog(frame: tuple[Any, ...]) -> None:
    _, level, name, text = frame
    logging.getLogger(name).log(level, "%s", text)


def _end(proc: subprocess.Popen[bytes], timeout: float = 2.0) -> int | None:
    """Make sure the child has ended: close its stdin (its signal to stop), wait ``timeout``,
    then kill. Returns its exit code."""
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            return proc.wait(2.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process SIGKILL cannot end
            return None
    finally:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


# ----------------------------------------------------------------------------------------------
# child


def _watch_parent() -> None:
    """POSIX: end when the parent is gone, even if something else still holds our stdin open (a
    process the daemon forked without exec)."""
    if sys.platform == "win32":
        return
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="osc-parent-watch", daemon=True).start()


class _Out:
    """Frames to the parent, from any thread of the child; a parent gone ends the child."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, frame: tuple[Any, ...]) -> None:
        body = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            try:
                self._stream.write(_LEN.pack(len(body)) + body)
                self._stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                os._exit(0)  # the parent is gone: nobody to receive for


class _ForwardLogs(logging.Handler):
    def __init__(self, out: _Out) -> None:
        super().__init__()
        self._out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self._out.send(("log", record.levelno, record.name, text))
        except Exception:
            self.handleError(record)


class _Relay:
    """The child's callbacks: batches go out at once, rejections once per slice."""

    def __init__(self, out: _Out) -> None:
        self.out = out
        self.server: OscServer | None = None
        self._errors: list[tuple[str, str]] = []
        self._dropped = 0
        self._sent: dict[str, int] = {}

    def counts(self) -> dict[str, int]:
        assert self.server is not None
        counts = self.server.stats()
        self._sent = counts
        return counts

    def on_batch(self, batch: list[Command]) -> None:
        self.out.send(("batch", batch, self.counts()))

    def on_error(self, address: str, reason: str) -> None:
        if len(self._errors) < MAX_ERRORS_PER_SLICE:
            self._errors.append((address, reason))
        else:
            self._dropped += 1

    def on_slice_end(self) -> None:
        if self._errors or self._dropped:
            errors, self._errors = self._errors, []
            dropped, self._dropped = self._dropped, 0
            self.out.send(("errors", errors, dropped, self.counts()))
        elif self.server is not None and self.server.stats() != self._sent:
            self.out.send(("stats", self.counts()))


def child_main() -> int:
    """The child process: receive on the parent's behalf until stdin ends."""
    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):  # the parent decides when: the end of stdin
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    _watch_parent()
    if hasattr(os, "nice"):  # POSIX: when the CPUs are short, the render loop comes first
        try:
            os.nice(CHILD_NICE)
        except OSError:
            pass
    stdin = sys.stdin.buffer
    out = _Out(sys.stdout.buffer)
    sys.stdout = sys.stderr  # a stray print must not corrupt the frames
    settings: Mapping[str, Any] = pickle.load(stdin)
    root = logging.getLogger()
    root.handlers[:] = [_ForwardLogs(out)]
    root.setLevel(int(settings["log_level"]))
    relay = _Relay(out)
    server = OscServer(
        settings["host"], int(settings["port"]), on_batch=relay.on_batch, on_error=relay.on_error,
        allow=settings["allow"], surface=ControlSurface(settings["ranges"], params=settings["params"]),
        rcvbuf_bytes=int(settings["rcvbuf"]), duty=float(settings["duty"]), on_slice_end=relay.on_slice_end,
    )
    relay.server = server
    try:
        server.start()
    except (OSError, ValueError) as exc:
        out.send(("fail", getattr(exc, "errno", None), getattr(exc, "strerror", None) or str(exc)))
        return 1
    out.send(("ready", server.port, server.rcvbuf_granted, server.socket_inode))
    while stdin.read(4096):  # until the parent closes it (or dies)
        pass
    server.stop()  # handles what is still in the socket buffer
    relay.on_slice_end()
    out.send(("stats", relay.counts()))
    return 0

