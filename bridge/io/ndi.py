"""NDI® source and sink through ``ndi-python`` (``import NDIlib``), imported lazily.

Facts this module is built on (checked on Linux with ndi-python 6.3.2):

* The runtime is initialised once per process (:func:`load_ndi`). ``NDI_CONFIG_DIR`` is read at
  initialisation: set it before the first NDI backend opens.
* Without mDNS (containers, locked-down networks) discovery only works through explicit IPs, so
  ``127.0.0.1`` is always added to the finder's extra IPs. Every NDI process listens on TCP 5960
  with port reuse and a finder's loopback connection lands on one of them at random, seeing only
  that process's senders: discovery therefore retries with a *fresh finder* each attempt.
* Sender names are ``"MACHINE (Stream)"``; a wanted name matches the full name or the stream part.
* A receiver can connect straight to ``host:port`` (``address``); the name is then not checked.
* The first captures after connecting are status/source-change events, not video. Frames are views
  of NDI memory: copied, then freed at once.
* When a sender disappears NDI keeps the receiver and reconnects by itself if it comes back; the
  only "gone" signal the library gives is ``FRAME_TYPE_ERROR``, which raises :class:`SourceGone`.
  A silent sender is a stall, which the runtime's watchdog handles.
* Strings given to the binding's constructors are not kept alive by it, so every name is set
  through the property setters (which keep a copy) instead of constructor arguments.

NDI® is a registered trademark of Vizrt NDI AB. The NDI runtime ships inside the ``ndi-python``
wheel under the NDI SDK licence; it is never vendored here.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

import cv2
import numpy as np
from numpy.lib.stride_tricks import as_strided
from pydantic import Field, field_validator, model_validator

from bridge.io._common import SinkConfig, SourceConfig, as_rgb, import_optional
from bridge.io.base import (
    BackendUnavailable,
    Frame,
    FrameSink,
    FrameSource,
    PixelFormat,
    SourceGone,
)

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_FINDER_ATTEMPT_S = 0.5
_WAIT_SLICE_MS = 100  # the longest native wait: a stop interrupts discovery within about this

_lib_lock = threading.Lock()
_initialized: ModuleType | None = None


_native: Any = None

# discoveries in progress: interrupt_discovery() sets their events so a stop never waits for one
_discoveries: set[threading.Event] = set()
_discoveries_lock = threading.Lock()


def interrupt_discovery() -> int:
    """Cut short every NDI discovery in progress (each returns within ~0.1 s with what it found;
    :meth:`NdiSource.open` then raises :class:`SourceGone`). Thread-safe; returns how many.

    Why this matters: a thread that returns from an NDI call while the interpreter is exiting
    aborts the process (``terminate called without an active exception``, exit 134; see
    ``bridge.cmd_run.exit_process_if_stuck``). Discovery is the only NDI call that takes seconds,
    so a stop interrupts it and the source worker ends before the interpreter does."""
    with _discoveries_lock:
        events = list(_discoveries)
    for event in events:
        event.set()
    return len(events)


def _native_destroy(lib: ModuleType) -> Any:
    """``NDIlib_recv_destroy`` from the wheel's own libndi, called through ctypes (which releases
    Python's GIL during the call), or None where that is not possible."""
    global _native
    if _native is None:
        try:
            import ctypes

            path = Path(lib.__file__).resolve().parent
            candidates = sorted(path.glob("libndi.so*")) + sorted(path.glob("libndi*.dylib"))
            candidates += sorted(path.glob("Processing.NDI.Lib*.dll"))
            dll = ctypes.CDLL(str(candidates[0]))
            fn = dll.NDIlib_recv_destroy
            fn.argtypes, fn.restype = [ctypes.c_void_p], None
            api = ctypes.pythonapi
            api.PyCapsule_GetPointer.restype = ctypes.c_void_p
            api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
            api.PyCapsule_GetName.restype = ctypes.c_char_p
            api.PyCapsule_GetName.argtypes = [ctypes.py_object]
            api.PyCapsule_GetDestructor.restype = ctypes.c_void_p
            api.PyCapsule_GetDestructor.argtypes = [ctypes.py_object]
            _native = (fn, api)
        except (OSError, IndexError, AttributeError) as exc:
            log.debug("NDI: no native receiver destroy (%s); using the binding's", exc)
            _native = False
    return _native or None


def destroy_receiver(lib: ModuleType, recv: Any) -> None:
    """Destroy an NDI receiver without freezing the process.

    When its sender has gone, ``recv_destroy`` blocks ~140 ms inside the binding while holding
    the GIL, which stops every thread (the publisher too: a visible output freeze). The same C
    call made through ctypes blocks only the calling thread (the source worker).
    """
    native = _native_destroy(lib)
    if native is not None and type(recv).__name__ == "PyCapsule":
        fn, api = native
        name = api.PyCapsule_GetName(recv)
        # only a capsule without a destructor of its own is safe to free here (no double free)
        if api.PyCapsule_GetDestructor(recv) is None:
            ptr = api.PyCapsule_GetPointer(recv, name)
            if ptr:
                fn(ptr)
                return
    lib.recv_destroy(recv)


def load_ndi() -> ModuleType:
    """Import NDIlib and initialise the NDI runtime once per process."""
    global _initialized
    lib = import_optional("NDIlib", kind="NDI", extra="ndi")
    with _lib_lock:
        if _initialized is not lib:
            supported = getattr(lib, "is_supported_CPU", None)
            if supported is not None and not supported():
                raise BackendUnavailable("NDI: this CPU is not supported by the NDI runtime")
            if not lib.initialize():
                raise BackendUnavailable("NDI: the NDI runtime failed to initialise")
            _initialized = lib
            version = lib.version() if hasattr(lib, "version") else "?"
            log.info("NDI runtime initialised (%s)", version)
    return lib


# -- discovery -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class NdiSenderInfo:
    """A sender seen by discovery: full NDI name and ``host:port``."""

    name: str
    address: str


def discovery_ips(extra_ips: Sequence[str] = ()) -> list[str]:
    """The finder's extra IPs: always loopback first, then the configured ones, de-duplicated."""
    return list(dict.fromkeys([LOOPBACK, *[ip.strip() for ip in extra_ips if ip.strip()]]))


def discover(
    timeout: float,
    extra_ips: Sequence[str] = (),
    *,
    until: Callable[[list[NdiSenderInfo]], bool] | None = None,
    cancel: threading.Event | None = None,
) -> list[NdiSenderInfo]:
    """Senders visible within ``timeout`` s (at least one attempt), one fresh finder per attempt.

    Returns the union of every attempt, sorted by name. With ``until``, returns as soon as
    ``until(senders_so_far)`` is true. Native waits last at most 0.1 s; when ``cancel`` is set
    (or :func:`interrupt_discovery` is called) it returns what it has found so far.
    """
    lib = load_ndi()
    cancel = cancel if cancel is not None else threading.Event()
    with _discoveries_lock:
        _discoveries.add(cancel)
    try:
        return _discover(lib, timeout, extra_ips, until, cancel)
    finally:
        with _discoveries_lock:
            _discoveries.discard(cancel)


def _discover(
    lib: ModuleType,
    timeout: float,
    extra_ips: Sequence[str],
    until: Callable[[list[NdiSenderInfo]], bool] | None,
    cancel: threading.Event,
) -> list[NdiSenderInfo]:
    ips = ",".join(discovery_ips(extra_ips))
    seen: dict[tuple[str, str], NdiSenderInfo] = {}
    deadline = time.monotonic() + max(0.0, timeout)
    attempts = 0
    done = False
    while not done and not cancel.is_set():
        attempts += 1
        settings = lib.FindCreate()
        settings.show_local_sources = True
        settings.extra_ips = ips
        finder = lib.find_create_v2(settings)
        if finder is None:
            raise BackendUnavailable("NDI: could not create a finder")
        try:
            attempt_end = min(deadline, time.monotonic() + _FINDER_ATTEMPT_S)
            while True:
                wait_ms = int(1000 * max(0.0, attempt_end - time.monotonic()))
                lib.find_wait_for_sources(finder, min(wait_ms, _WAIT_SLICE_MS))
                # copy the strings out before the finder (which owns them) is destroyed
                for src in lib.find_get_current_sources(finder):
                    info = NdiSenderInfo(str(src.ndi_name), str(src.url_address))
                    seen[(info.name, info.address)] = info
                if until is not None and until(sorted(seen.values(), key=_by_name)):
                    done = True
                    break
                if time.monotonic() >= attempt_end or cancel.is_set():
                    break
        finally:
            lib.find_destroy(finder)
        if time.monotonic() >= deadline:
            done = True
    log.debug("NDI discovery: %d attempt(s), %d sender(s)", attempts, len(seen))
    return sorted(seen.values(), key=_by_name)


def _by_name(sender: NdiSenderInfo) -> tuple[str, str]:
    return (sender.name, sender.address)


_STREAM_PART = re.compile(r"^.*\((.*)\)\s*$")


def stream_part(full_name: str) -> str:
    """``"MACHINE (Stream)"`` -> ``"Stream"``; a name without parentheses is returned as is."""
    m = _STREAM_PART.match(full_name)
    return m.group(1) if m else full_name


def match_sender(wanted: str, senders: Sequence[NdiSenderInfo]) -> NdiSenderInfo | None:
    """Pick the sender called ``wanted``: exact full name, then exact stream part, then the same
    two case-insensitively. Several equally good matches: the first by name, with a warning."""
    wanted = wanted.strip()
    if not wanted:
        return None
    tiers: list[Callable[[NdiSenderInfo], bool]] = [
        lambda s: s.name == wanted,
        lambda s: stream_part(s.name) == wanted,
        lambda s: s.name.casefold() == wanted.casefold(),
        lambda s: stream_part(s.name).casefold() == wanted.casefold(),
    ]
    for tier in tiers:
        hits = sorted((s for s in senders if tier(s)), key=_by_name)
        if hits:
            if len({h.name for h in hits}) > 1:
                log.warning(
                    "NDI name %r matches several senders %s; using %r",
                    wanted,
                    [h.name for h in hits],
                    hits[0].name,
                )
            return hits[0]
    return None


def list_senders(timeout: float, extra_ips: Sequence[str] = ()) -> list[str]:
    """Full names of the NDI senders visible within ``timeout`` seconds."""
    return sorted({s.name for s in discover(timeout, extra_ips)})


# -- frames --------------------------------------------------------------------------------------
def copy_plane(data: Any, width: int, height: int, stride: int, bpp: int) -> np.ndarray | None:
    """Copy a packed ``height`` x ``width`` x ``bpp`` image out of NDI memory into a new
    C-contiguous array, honouring the row stride. Returns None for anything inconsistent
    (empty, stride too small, odd UYVY width, buffer too short) instead of guessing."""
    if width <= 0 or height <= 0 or bpp <= 0 or stride < width * bpp:
        return None
    if bpp == 2 and width % 2:
        return None
    arr = np.asarray(data)
    if arr.dtype != np.uint8 or arr.size == 0 or any(s < 0 for s in arr.strides):
        return None
    span = sum((n - 1) * s for n, s in zip(arr.shape, arr.strides, strict=True)) + 1
    if span < (height - 1) * stride + width * bpp:
        return None
    view = as_strided(arr, shape=(height, width, bpp), strides=(stride, bpp, 1), writeable=False)
    return np.array(view, copy=True, order="C")


_COLOR_FORMATS = {
    "uyvy_bgra": "RECV_COLOR_FORMAT_UYVY_BGRA",
    "bgra": "RECV_COLOR_FORMAT_BGRX_BGRA",
    "rgba": "RECV_COLOR_FORMAT_RGBX_RGBA",
}
_BANDWIDTHS = {"highest": "RECV_BANDWIDTH_HIGHEST", "lowest": "RECV_BANDWIDTH_LOWEST"}


def _fourcc_table(lib: ModuleType) -> dict[int, tuple[PixelFormat, int]]:
    table: dict[int, tuple[PixelFormat, int]] = {}
    for name, fmt, bpp in (
        ("FOURCC_VIDEO_TYPE_BGRA", PixelFormat.BGRA, 4),
        ("FOURCC_VIDEO_TYPE_BGRX", PixelFormat.BGRA, 4),
        ("FOURCC_VIDEO_TYPE_RGBA", PixelFormat.RGBA, 4),
        ("FOURCC_VIDEO_TYPE_RGBX", PixelFormat.RGBA, 4),
        ("FOURCC_VIDEO_TYPE_UYVY", PixelFormat.UYVY, 2),
        # UYVA = a UYVY plane followed by an alpha plane: the UYVY plane is used
        ("FOURCC_VIDEO_TYPE_UYVA", PixelFormat.UYVY, 2),
    ):
        if hasattr(lib, name):
            table[int(getattr(lib, name))] = (fmt, bpp)
    return table


# -- source --------------------------------------------------------------------------------------
IpAddress = Annotated[str, Field(min_length=1, max_length=253)]


class NdiSourceConfig(SourceConfig):
    """Receive an NDI stream (any OS with the ``ndi`` extra)."""

    type: Literal["ndi"] = "ndi"
    name: str = Field(
        "",
        max_length=256,
        description="Sender to receive: the full NDI name 'MACHINE (Stream)' or just 'Stream'. "
        "May be empty when 'address' is given.",
    )
    address: str | None = Field(
        None,
        max_length=262,
        pattern=r"^[^\s:]+:\d{1,5}$",
        description="Connect straight to 'host:port' (e.g. '127.0.0.1:5961') without discovery; "
        "the name is then not checked.",
    )
    extra_ips: list[IpAddress] = Field(
        default_factory=list,
        max_length=64,
        description="Extra machines to ask for senders when mDNS does not reach them "
        "(127.0.0.1 is always asked).",
    )
    discovery_timeout: float = Field(
        5.0,
        ge=0.1,
        le=120.0,
        description="Seconds open() looks for the named sender (a fresh finder every 0.5 s) "
        "before giving up with SourceGone.",
    )
    color_format: Literal["uyvy_bgra", "bgra", "rgba"] = Field(
        "uyvy_bgra",
        description="What NDI hands over: 'uyvy_bgra' (UYVY, or BGRA when the sender has alpha; "
        "cheapest), 'bgra' or 'rgba' (NDI converts).",
    )
    bandwidth: Literal["highest", "lowest"] = Field(
        "highest", description="'lowest' asks the sender for its low-bandwidth preview stream."
    )
    receiver_name: str = Field(
        "streambridge",
        min_length=1,
        max_length=128,
        description="How this receiver shows up in NDI tools.",
    )

    @field_validator("address")
    @classmethod
    def _port_in_range(cls, v: str | None) -> str | None:
        if v is not None and not 1 <= int(v.rpartition(":")[2]) <= 65535:
            raise ValueError(f"port {int(v.rpartition(':')[2])} in {v!r} is outside 1..65535")
        return v

    @model_validator(mode="after")
    def _need_target(self) -> NdiSourceConfig:
        if not self.name.strip() and not self.address:
            raise ValueError("an NDI source needs a sender 'name' or an 'address' (host:port)")
        return self


class NdiSource(FrameSource):
    kind = "ndi"

    def __init__(self, cfg: NdiSourceConfig) -> None:
        self.cfg = cfg
        self._lib: ModuleType | None = None
        self._recv: Any = None
        self._target: NdiSenderInfo | None = None
        self._fourccs: dict[int, tuple[PixelFormat, int]] = {}
        self._capture: Callable[[int], tuple[Any, Any, Any, Any]] | None = None
        self._seq = 0
        self._fps: float | None = None
        self._warned_fourcc: set[int] = set()
        self.frames_dropped = 0

    def open(self) -> None:
        lib = load_ndi()
        cfg = self.cfg
        if cfg.address:
            target = NdiSenderInfo(cfg.name.strip(), cfg.address)
        else:
            cancel = threading.Event()
            found = discover(
                cfg.discovery_timeout,
                cfg.extra_ips,
                until=lambda senders: match_sender(cfg.name, senders) is not None,
                cancel=cancel,
            )
            target = match_sender(cfg.name, found)
            if target is None and cancel.is_set():
                raise SourceGone(f"NDI discovery of {cfg.name!r} interrupted (stopping)")
            if target is None:
                visible = ", ".join(repr(s.name) for s in found) or "none"
                # no timings in the text: the same reason on every retry is reported once
                raise SourceGone(
                    f"NDI sender {cfg.name!r} not found (looked {cfg.discovery_timeout:g} s; "
                    f"visible: {visible})"
                )
        settings = lib.RecvCreateV3()
        settings.color_format = getattr(lib, _COLOR_FORMATS[cfg.color_format])
        settings.bandwidth = getattr(lib, _BANDWIDTHS[cfg.bandwidth])
        settings.allow_video_fields = False
        settings.ndi_recv_name = cfg.receiver_name
        recv = lib.recv_create_v3(settings)
        if recv is None:
            raise SourceGone("NDI: could not create a receiver")
        source = lib.Source()
        source.ndi_name = target.name or target.address
        source.url_address = target.address
        lib.recv_connect(recv, source)
        self._lib, self._recv, self._target = lib, recv, target
        self._fourccs = _fourcc_table(lib)
        self._capture = self._make_capture(lib, recv)
        self._seq = 0
        log.info("NDI source connected to %r at %s", target.name or "?", target.address)

    @staticmethod
    def _make_capture(lib: ModuleType, recv: Any) -> Callable[[int], tuple[Any, Any, Any, Any]]:
        """Capture video only when the binding can (ndi-python 6.x documents ``want_audio``);
        older bindings capture everything, and read() frees the audio/metadata they return."""
        if "want_audio" in (getattr(lib.recv_capture_v2, "__doc__", None) or ""):
            return lambda ms: lib.recv_capture_v2(recv, ms, want_audio=False, want_metadata=False)
        return lambda ms: lib.recv_capture_v2(recv, ms)

    def read(self, timeout: float) -> Frame | None:
        lib, recv, capture = self._lib, self._recv, self._capture
        if lib is None or recv is None or capture is None:
            raise RuntimeError("NdiSource.read() called before open()")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            remaining_ms = max(0, int(1000 * (deadline - time.monotonic())))
            ftype, video, audio, meta = capture(remaining_ms)
            if ftype == lib.FRAME_TYPE_VIDEO:
                t_capture = time.monotonic()
                try:
                    frame = self._to_frame(video, t_capture)
                finally:
                    lib.recv_free_video_v2(recv, video)
                if frame is not None:
                    return frame
            elif ftype == lib.FRAME_TYPE_ERROR:
                name = self._target.name if self._target else "?"
                raise SourceGone(f"NDI reported the connection to {name!r} as lost")
            elif ftype == lib.FRAME_TYPE_AUDIO:
                lib.recv_free_audio_v2(recv, audio)
            elif ftype == lib.FRAME_TYPE_METADATA:
                lib.recv_free_metadata(recv, meta)
            elif ftype == lib.FRAME_TYPE_NONE:
                return None  # the timeout ran out with nothing
            else:  # status / source change events, e.g. right after connecting
                log.debug("NDI event %s", ftype)
            if time.monotonic() >= deadline:
                return None

    def _to_frame(self, video: Any, t_capture: float) -> Frame | None:
        fourcc = int(video.FourCC)
        spec = self._fourccs.get(fourcc)
        if spec is None:
            self.frames_dropped += 1
            if fourcc not in self._warned_fourcc:
                self._warned_fourcc.add(fourcc)
                log.warning("NDI frame with unsupported FourCC %s dropped", video.FourCC)
            return None
        fmt, bpp = spec
        width, height = int(video.xres), int(video.yres)
        stride = int(video.line_stride_in_bytes) or width * bpp
        data = video.data if width > 0 and height > 0 else None
        arr = copy_plane(data, width, height, stride, bpp) if data is not None else None
        if arr is None:
            self.frames_dropped += 1
            log.warning(
                "NDI frame dropped: inconsistent geometry %dx%d stride %d (%s)",
                width,
                height,
                stride,
                fmt.value,
            )
            return None
        if video.frame_rate_D > 0 and video.frame_rate_N > 0:
            self._fps = video.frame_rate_N / video.frame_rate_D
        seq = self._seq
        self._seq += 1
        return Frame(data=arr, fmt=fmt, seq=seq, t_capture=t_capture)

    def close(self) -> None:
        lib, recv = self._lib, self._recv
        self._recv = None
        self._capture = None
        if lib is not None and recv is not None:
            destroy_receiver(lib, recv)

    @property
    def connections(self) -> int:
        """Live connections of the receiver (0 while the sender is away)."""
        if self._lib is None or self._recv is None:
            return 0
        return int(self._lib.recv_get_no_connections(self._recv))

    @property
    def nominal_fps(self) -> float | None:
        return self._fps

    def describe(self) -> str:
        if self._target is not None:
            return f"ndi:{self._target.name or self._target.address} ({self._target.address})"
        return f"ndi:{self.cfg.name or self.cfg.address}"


# -- sink ----------------------------------------------------------------------------------------
class NdiSinkConfig(SinkConfig):
    """Publish the output as an NDI sender (any OS with the ``ndi`` extra)."""

    type: Literal["ndi"] = "ndi"
    name: str = Field(
        "streambridge",
        min_length=1,
        max_length=128,
        description="Sender name; receivers see it as 'MACHINE (name)'.",
    )
    pixel_format: Literal["bgra", "rgba"] = Field(
        "bgra",
        description="Byte order sent (flagged opaque, so receivers may get UYVY); "
        "BGRA is NDI's native order.",
    )


class NdiSink(FrameSink):
    kind = "ndi"

    def __init__(self, cfg: NdiSinkConfig | None = None) -> None:
        self.cfg = cfg or NdiSinkConfig()
        self._lib: ModuleType | None = None
        self._send: Any = None
        self._frame: Any = None
        self._buf: np.ndarray | None = None
        self._full_name = ""
        self.frames_sent = 0

    def open(self, width: int, height: int, fps: float) -> None:
        lib = load_ndi()
        settings = lib.SendCreate()
        settings.ndi_name = self.cfg.name
        settings.clock_video = False  # the publisher paces; NDI must not block in send
        settings.clock_audio = False
        send = lib.send_create(settings)
        if send is None:
            raise OSError(f"NDI could not create sender {self.cfg.name!r}")
        rate = Fraction(fps if fps > 0 else 30.0).limit_denominator(1001)
        frame = lib.VideoFrameV2()
        rgba = self.cfg.pixel_format == "rgba"
        frame.FourCC = lib.FOURCC_VIDEO_TYPE_RGBX if rgba else lib.FOURCC_VIDEO_TYPE_BGRX
        frame.frame_rate_N = rate.numerator
        frame.frame_rate_D = rate.denominator
        frame.frame_format_type = lib.FRAME_FORMAT_TYPE_PROGRESSIVE
        self._code = cv2.COLOR_RGB2RGBA if rgba else cv2.COLOR_RGB2BGRA
        self._lib, self._send, self._frame = lib, send, frame
        self._buf = np.empty((height, width, 4), np.uint8) if width > 0 and height > 0 else None
        try:
            self._full_name = str(lib.send_get_source_name(send).ndi_name)
        except Exception:  # cosmetic only
            self._full_name = self.cfg.name
        log.info("NDI sender %r open (%dx%d @ %s fps)", self._full_name, width, height, rate)

    def send(self, rgb: np.ndarray) -> None:
        lib, send, frame = self._lib, self._send, self._frame
        if lib is None or send is None or frame is None:
            raise RuntimeError("NdiSink.send() called before open()")
        rgb = as_rgb(rgb)
        h, w = rgb.shape[:2]
        if self._buf is None or self._buf.shape[:2] != (h, w):
            self._buf = np.empty((h, w, 4), np.uint8)
        cv2.cvtColor(rgb, self._code, dst=self._buf)
        # the binding keeps a raw pointer: self._buf must (and does) outlive the synchronous send
        frame.data = self._buf
        lib.send_send_video_v2(send, frame)
        self.frames_sent += 1

    def close(self) -> None:
        lib, send = self._lib, self._send
        self._send = None
        if lib is not None and send is not None:
            lib.send_destroy(send)

    @property
    def connections(self) -> int:
        if self._lib is None or self._send is None:
            return 0
        return int(self._lib.send_get_no_connections(self._send, 0))

    def describe(self) -> str:
        return f"ndi:{self._full_name or self.cfg.name}"
