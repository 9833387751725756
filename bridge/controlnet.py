"""ControlNets in the daemon: control frames, canny edges off the render thread, second sources.

Each configured ControlNet (``controlnets:`` in the config) gets a *slot*:

* ``source: input``: the control image is the pipeline's own input frame. For ``none`` and
  ``depth`` the engine is given ``None`` (it uses the input frames; ``depth`` runs on the device).
  For ``canny`` the edge image is computed on the input source's worker thread (the ``derive``
  hook of :class:`~bridge.runtime.source_worker.SourceWorker`) and travels with the frame it was
  made from (:class:`ControlPacket`), so it is always paired with its own frame.
* a second source (``source: ndi:TD Depth``, ...): its own
  :class:`~bridge.runtime.source_worker.SourceWorker` (own health state, reconnects, staleness
  from the clock) puts control frames, already resized to the pipeline size (and turned into
  edges for ``canny``, on that worker's thread), into a latest-wins mailbox of one. The render
  loop never waits for it: when an input frame enters the stream (:meth:`ControlNetFeed.pair`)
  it takes the newest control frame there is, or keeps the one it had.

When a second source is lost the slot either *holds* its last control frame (``on_loss: hold``)
or *fades* the ControlNet's scale to 0 over ``fade_s`` (``on_loss: fade``) and back in once the
source is live again; :meth:`ControlNetFeed.gains` gives the factor the live controller
multiplies the scale by. Before a second source delivered its first frame, there is nothing to
hold: the factor is 0 (no ControlNet call) and a black frame fills the slot.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.params import controlnet_param_name
from bridge.runtime.convert import Resizer
from bridge.runtime.health import SourceHealth
from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import Metrics
from bridge.runtime.packet import FramePacket

log = logging.getLogger("streambridge.controlnet")

#: states of a second source in which its frames are current (``stalled`` is a short gap)
_FLOWING = ("live", "stalled")


class ControlPacket(FramePacket):
    """A :class:`FramePacket` with the control images derived from its frame (``control``: a
    dict ControlNet index -> H x W x 3 uint8), made off the render thread. Still unpacks as
    ``rgb, t_capture, seq``."""

    control: dict[int, np.ndarray]

    @classmethod
    def attach(cls, packet: FramePacket, control: dict[int, np.ndarray]) -> ControlPacket:
        out = cls(*packet)
        out.control = control
        return out


def canny_rgb(rgb: np.ndarray, low: float, high: float) -> np.ndarray:
    """OpenCV's canny edges of an RGB uint8 frame as an RGB image (white edges on black), the
    form a canny ControlNet takes. OpenCV uses the smaller threshold as the low one."""
    import cv2

    edges = cv2.Canny(np.ascontiguousarray(rgb), float(low), float(high))
    return cv2.cvtColor(edges, cv2.COLOR_GRAY2RGB)


class CannyThresholds:
    """The live canny thresholds per ControlNet index. Written by the render thread (the live
    controller), read by the worker threads computing edges: each entry is one tuple, replaced
    whole, so a reader never sees a half-updated pair."""

    def __init__(self, initial: dict[int, tuple[float, float]] | None = None) -> None:
        self._values: dict[int, tuple[float, float]] = dict(initial or {})

    def set(self, index: int, low: float | None = None, high: float | None = None) -> None:
        old_low, old_high = self._values.get(index, (100.0, 200.0))
        self._values[index] = (old_low if low is None else float(low), old_high if high is None else float(high))

    def get(self, index: int) -> tuple[float, float]:
        return self._values.get(index, (100.0, 200.0))


@dataclass
class _Slot:
    index: int
    preprocessor: str
    second: bool  # a second source (else: the input frame)
    on_loss: str = "hold"
    fade_s: float = 1.0
    worker: Any = None  # SourceWorker for a second source
    mailbox: LatestMailbox[FramePacket] | None = None
    metrics: Metrics | None = None
    last: np.ndarray | None = None  # the control frame in use (second source)
    last_seq: int = -1
    frames: int = 0  # control frames taken by the render loop
    gain: float = 1.0
    held: bool = False
    state_fn: Callable[[], str] = field(default=lambda: "input")

    @property
    def state(self) -> str:
        return self.state_fn()


class ControlNetFeed:
    """The control frames of every configured ControlNet, for the render loop.

    ``controlnets`` are :class:`bridge.config.ControlNetConfig` items (anything with
    ``preprocessor``, ``source``, ``on_loss``, ``fade_s``, ``canny.low/high``). ``make_worker(slot
    index, config, mailbox, metrics, derive)`` builds the (unstarted) source worker of a second
    source; the daemon passes one that makes a real
    :class:`~bridge.runtime.source_worker.SourceWorker`. ``size`` is the pipeline's (w, h).

    Thread use: :meth:`derive_input` runs on the input source's worker thread, the derive hooks
    of second sources on theirs; :meth:`pair`, :meth:`control_for` and :meth:`gains` on the
    render thread; :meth:`status` anywhere.
    """

    def __init__(
        self,
        controlnets: Sequence[Any],
        size: tuple[int, int],
        *,
        make_worker: Callable[..., Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = (int(size[0]), int(size[1]))
        self._clock = clock
        self.thresholds = CannyThresholds(
            {i: (float(c.canny.low), float(c.canny.high)) for i, c in enumerate(controlnets)
             if c.preprocessor == "canny"}
        )
        self.slots: list[_Slot] = []
        for i, c in enumerate(controlnets):
            second = c.source != "input"
            slot = _Slot(i, c.preprocessor, second, on_loss=c.on_loss, fade_s=float(c.fade_s))
            if second:
                if make_worker is None:
                    raise ValueError(f"controlnets[{i}] has a second source but no worker factory was given")
                slot.mailbox = LatestMailbox(1, name=f"control-{i}")
                slot.metrics = Metrics()
                derive = self._edges_hook(i) if c.preprocessor == "canny" else None
                slot.worker = make_worker(i, c, slot.mailbox, slot.metrics, derive)
                slot.state_fn = (lambda w=slot.worker: str(w.state))
                slot.gain = 0.0  # nothing to use before the first control frame
            self.slots.append(slot)
        self._black: np.ndarray | None = None
        self._last_tick: float | None = None
        self._lock = threading.Lock()  # status() reads slot fields the render thread writes

    # -- set-up ----------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return len(self.slots)

    @property
    def needs_input_hook(self) -> bool:
        """True when some ControlNet derives its control image from the input frame off the
        render thread (``canny`` on ``source: input``)."""
        return any(not s.second and s.preprocessor == "canny" for s in self.slots)

    def start(self) -> None:
        for s in self.slots:
            if s.worker is not None:
                s.worker.start()

    def stop(self, timeout: float = 2.0) -> list[str]:
        """Stop every second source; returns the names of workers left inside a backend call."""
        left = []
        for s in self.slots:
            if s.worker is not None:
                if s.mailbox is not None:
                    s.mailbox.close()
                if not s.worker.stop(timeout=timeout):
                    left.append(str(getattr(s.worker, "name", f"control-{s.index}")))
        return left

    def workers(self) -> list[Any]:
        return [s.worker for s in self.slots if s.worker is not None]

    # -- worker threads --------------------------------------------------------------------------

    def _edges_hook(self, index: int) -> Callable[[FramePacket], FramePacket]:
        def derive(packet: FramePacket) -> FramePacket:
            low, high = self.thresholds.get(index)
            return FramePacket(canny_rgb(packet.rgb, low, high), packet.t_capture, packet.seq)

        return derive

    def derive_input(self, packet: FramePacket) -> FramePacket:
        """On the input source's worker thread: attach the edge images of the canny ControlNets
        that read the input frame."""
        control = {}
        for s in self.slots:
            if not s.second and s.preprocessor == "canny":
                low, high = self.thresholds.get(s.index)
                control[s.index] = canny_rgb(packet.rgb, low, high)
        return ControlPacket.attach(packet, control) if control else packet

    # -- render thread ---------------------------------------------------------------------------

    def pair(self, packet: FramePacket) -> list[np.ndarray | None]:
        """The control images for ``packet``, taken when it enters the stream: ``None`` where the
        engine uses the input frame itself, else an H x W x 3 uint8 image."""
        out: list[np.ndarray | None] = []
        for s in self.slots:
            if not s.second:
                if s.preprocessor == "canny":
                    control = getattr(packet, "control", None)
                    if control is None or s.index not in control:
                        raise ValueError(f"ControlNet {s.index}: the input frame came without its canny "
                                         "image (the input source worker computes it)")
                    out.append(control[s.index])
                else:
                    out.append(None)
                continue
            assert s.mailbox is not None
            newest = s.mailbox.take_latest()
            if newest is not None:
                with self._lock:
                    s.last, s.last_seq = newest.rgb, newest.seq
                    s.frames += 1
            out.append(s.last if s.last is not None else self._black_frame())
        return out

    def control_for(self, pairs: Sequence[Sequence[np.ndarray | None]]) -> list[np.ndarray | None]:
        """One entry per ControlNet for a stream call over the frames ``pairs`` came from (one
        :meth:`pair` result per frame, in order): None (use the input frames) or (f, H, W, 3)."""
        out: list[np.ndarray | None] = []
        for i in range(len(self.slots)):
            images = [p[i] for p in pairs]
            if all(im is None for im in images):
                out.append(None)
            else:
                out.append(np.stack([self._black_frame() if im is None else im for im in images]))
        return out

    def gains(self, now: float | None = None) -> list[float]:
        """Advance the loss fades to ``now`` and return each ControlNet's scale factor in 0..1
        (1 for ``source: input``)."""
        now = self._clock() if now is None else now
        dt = 0.0 if self._last_tick is None else max(0.0, now - self._last_tick)
        self._last_tick = now
        for s in self.slots:
            if not s.second:
                continue
            flowing = s.state in _FLOWING
            have = s.last is not None or (s.mailbox is not None and len(s.mailbox) > 0)
            if not have:
                target = 0.0
            elif flowing:
                target = 1.0
            else:
                target = 0.0 if s.on_loss == "fade" else 1.0
            if s.on_loss != "fade" or s.fade_s <= 0:
                gain = target
            else:
                step = dt / s.fade_s
                gain = min(target, s.gain + step) if target > s.gain else max(target, s.gain - step)
            with self._lock:
                s.gain = gain
                s.held = (not flowing) and s.last is not None and s.on_loss == "hold"
        return [s.gain for s in self.slots]

    def _black_frame(self) -> np.ndarray:
        if self._black is None:
            w, h = self.size
            self._black = np.zeros((h, w, 3), np.uint8)
        return self._black

    # -- reporting -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``control/<i>/state`` (``input`` or the second source's state), ``control/<i>/gain``
        (the scale factor the loss handling applies) and ``control/<i>/holding`` (1 while a lost
        source's last frame is held)."""
        out: dict[str, Any] = {}
        with self._lock:
            for s in self.slots:
                out[f"control/{s.index}/state"] = s.state
                out[f"control/{s.index}/gain"] = round(float(s.gain), 4)
                out[f"control/{s.index}/holding"] = int(s.held)
        return out

    def details(self) -> list[dict[str, Any]]:
        """Per ControlNet, for the status page: the status figures plus the source's detail and
        how many control frames were used."""
        rows = []
        for s in self.slots:
            row: dict[str, Any] = {"index": s.index, "preprocessor": s.preprocessor,
                                   "source": "input" if not s.second else str(getattr(s.worker, "name", "")),
                                   "state": s.state, "gain": round(float(s.gain), 4), "holding": bool(s.held),
                                   "frames": s.frames, "on_loss": s.on_loss if s.second else ""}
            if s.worker is not None:
                row["detail"] = str(getattr(s.worker, "detail", ""))
                if s.metrics is not None:
                    row["dropped"] = int(s.mailbox.counters()["dropped"]) if s.mailbox is not None else 0
            rows.append(row)
        return rows


def effective_scale(scale: float, gain: float) -> float:
    """The scale the pipeline gets: the live scale times the loss factor (never negative)."""
    v = float(scale) * float(gain)
    return v if math.isfinite(v) and v > 0.0 else 0.0


def initial_values(controlnets: Sequence[Any]) -> dict[str, Any]:
    """The live parameters' start values from the config's ``controlnets`` list."""
    out: dict[str, Any] = {}
    for i, c in enumerate(controlnets):
        out[controlnet_param_name(i, "scale")] = float(c.scale)
        out[controlnet_param_name(i, "enabled")] = bool(c.enabled)
        if c.preprocessor == "canny":
            out[controlnet_param_name(i, "canny_low")] = float(c.canny.low)
            out[controlnet_param_name(i, "canny_high")] = float(c.canny.high)
    return out


def make_source_worker(index: int, cfg: Any, mailbox: LatestMailbox[FramePacket], metrics: Metrics,
                       derive: Callable[[FramePacket], FramePacket] | None, *, size: tuple[int, int],
                       resize: str, on_state: Callable[[int, str, str], None] | None = None) -> Any:
    """A real :class:`~bridge.runtime.source_worker.SourceWorker` for the second source of
    ControlNet ``index`` (the same timeouts and backoff as the main source)."""
    from bridge.io.registry import create_source
    from bridge.runtime.source_worker import SourceWorker

    src_cfg = cfg.source
    health = SourceHealth(min_stall_s=0.25, stall_intervals=3.0, lost_after_s=0.75,
                          backoff_initial_s=0.25, backoff_max_s=5.0)

    def make() -> Any:
        return create_source(src_cfg)

    return SourceWorker(make, Resizer(size[0], size[1], resize), mailbox, metrics,  # type: ignore[arg-type]
                        on_state=(lambda state, detail: on_state(index, state, detail)) if on_state else None,
                        health=health, name=f"control{index}:{src_cfg.type}", derive=derive)
