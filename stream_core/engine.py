"""A pipeline bundled with its prompt encoder and frame conversion: what render and the daemon drive.

Frames come and go as RGB uint8 numpy arrays (F, H, W, 3); the engine converts them to and from
the pipeline's (F, 3, H, W) tensors in [-1, 1]. Everything between the upload and the download
happens on the pipeline's device:

* **Upload.** On CUDA the frame is copied into one of two pinned host buffers (double-buffered:
  the host fills one while the previous one may still be in flight) and sent on a side stream;
  the compute stream waits on that copy, the host does not. Elsewhere it is a plain ``from_numpy``.
* **Packing and mix.** clamp -> [0, 255] -> round -> uint8 -> NHWC, and the dry/wet mix with the
  input (the same formula as ``cv2.addWeighted``), on the device.
* **Download.** The packed frame and the output's finiteness flag go to pinned host memory with
  ``non_blocking`` copies followed by one CUDA event: :meth:`StreamEngine.process_async` returns a
  :class:`PendingFrame` whose ``ready()`` polls that event and ``result()`` waits for it. No other
  host synchronisation happens per frame. :meth:`StreamEngine.process` is the synchronous form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from stream_core.controlnet import ControlNetSpec
from stream_core.models import Components, with_controlnets
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.prompts import PromptEncoder
from stream_core.runner import ModelRunner, TorchRunner


def rgb_to_tensor(frames: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(F, H, W, 3) or (H, W, 3) uint8 -> (F, 3, H, W) in [-1, 1] on ``device``."""
    frames = _check_frames(frames)
    t = torch.from_numpy(np.ascontiguousarray(frames)).to(device, non_blocking=True)
    return unpack_rgb(t, dtype)


def unpack_rgb(frames_u8: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(F, H, W, 3) uint8 tensor -> (F, 3, H, W) in [-1, 1], on the tensor's device."""
    return frames_u8.permute(0, 3, 1, 2).to(dtype).mul_(2.0 / 255.0).sub_(1.0)


def pack_rgb(images: torch.Tensor) -> torch.Tensor:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W, 3) uint8, on the images' device (clamp, scale, round)."""
    x = images.detach().float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round_()
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def mix_rgb(dry: torch.Tensor, wet: torch.Tensor, mix: float) -> torch.Tensor:
    """Dry/wet blend of uint8 frames on their device: ``round(wet * mix + dry * (1 - mix))``,
    saturated to uint8 -- what ``cv2.addWeighted(wet, mix, dry, 1 - mix, 0)`` computes."""
    out = wet.float().mul(float(mix)).add_(dry.float().mul(1.0 - float(mix)))
    return out.round_().clamp_(0, 255).to(torch.uint8)


def tensor_to_rgb(images: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W, 3) uint8 on the CPU."""
    return pack_rgb(images).cpu().numpy()


def _check_frames(frames: np.ndarray) -> np.ndarray:
    if frames.ndim == 3:
        frames = frames[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames shaped (F, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


class _Uploader:
    """Host frames -> device uint8 tensors; on CUDA through two pinned buffers on a side stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device=device) if self.cuda else None
        self.host: list[torch.Tensor | None] = [None, None]
        self.done: list[Any] = [None, None]
        self.slot = 0

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        if not self.cuda:
            return torch.from_numpy(np.ascontiguousarray(frames))
        i = self.slot
        self.slot ^= 1
        buf = self.host[i]
        if buf is None or tuple(buf.shape) != frames.shape:
            buf = self.host[i] = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
            self.done[i] = None
        if self.done[i] is not None:  # the copy that last read this buffer (two frames ago) has finished
            self.done[i].synchronize()
        buf.numpy()[...] = frames
        compute = torch.cuda.current_stream(self.device)
        assert self.stream is not None
        # the copy reads only the pinned buffer (guarded by its event) and writes fresh device
        # memory, so it need not wait for the compute stream: it overlaps the previous frame's work
        with torch.cuda.stream(self.stream):
            dev = buf.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        compute.wait_event(event)
        dev.record_stream(compute)
        self.done[i] = event
        return dev


class PendingFrame:
    """A processed frame on its way to the host: ``ready()`` without blocking, ``result()`` waits.

    ``finite`` (after ``result()``/``wait()``) says whether the pipeline's output was all finite;
    it travels with the frame's download, so reading it costs no extra synchronisation.
    """

    def __init__(self, host: torch.Tensor, flag: torch.Tensor, event: Any, engine: StreamEngine) -> None:
        self._host = host
        self._flag = flag
        self._event = event
        self._engine = engine
        self._array: np.ndarray | None = None
        self.finite: bool | None = None

    def ready(self) -> bool:
        """True once the frame is in host memory (never blocks)."""
        return self._array is not None or self._event is None or bool(self._event.query())

    def wait(self) -> None:
        if self._array is not None:
            return
        if self._event is not None:
            self._event.synchronize()
        self.finite = bool(self._flag.item())
        # the pinned buffer is reused two frames later: keep a copy that the caller owns
        self._array = self._host.numpy().copy() if self._event is not None else self._host.numpy()
        self._engine.output_finite = self.finite

    def result(self) -> np.ndarray:
        """The frame(s) as (F, H, W, 3) uint8, waiting for the download if needed."""
        self.wait()
        assert self._array is not None
        return self._array


class StreamEngine:
    """Components + runner + pipeline + prompt encoder, built once."""

    def __init__(
        self,
        components: Components,
        settings: StreamSettings,
        prompt: str,
        negative_prompt: str = "",
        runner: ModelRunner | None = None,
        acceleration_info: dict[str, Any] | None = None,
        frame_graph: bool = False,
        controlnets: Sequence[ControlNetSpec] | None = None,
    ) -> None:
        if controlnets is not None:  # exactly these ControlNets (loaded here unless already loaded)
            components = with_controlnets(components, controlnets)
        self.components = components
        self.encoder = PromptEncoder(components.tokenizer, components.text_encoder)
        units = list(getattr(components, "controlnets", ()) or ())
        self.runner = runner or TorchRunner(components.unet, components.vae, [lc.model for lc in units])
        pos = self.encoder.encode(prompt)
        neg = self.encoder.encode(negative_prompt)
        self.pipeline = StreamPipeline(self.runner, components.scheduler, settings, pos, neg, controlnets=units)
        self.settings = settings
        #: what runs the networks and why (``stream_core.accel.auto.AccelChoice.as_dict()``)
        self.acceleration_info: dict[str, Any] = dict(acceleration_info or {
            "requested": "none" if runner is None else "custom",
            "backend": "none" if runner is None else type(self.runner).__name__,
            "compile_mode": None, "device": self.runner.device.type, "reason": "set by the caller"})
        #: whether the last collected output was all finite (None before the first frame)
        self.output_finite: bool | None = None
        self._upload = _Uploader(self.runner.device)
        self._cuda = self.runner.device.type == "cuda"
        self._down: list[tuple[torch.Tensor, torch.Tensor] | None] = [None, None]
        self._down_pending: list[PendingFrame | None] = [None, None]
        self._down_slot = 0
        self._frame_graph: Any = None
        self._control_upload: list[_Uploader] | None = None
        if frame_graph:  # whole-frame CUDA graph (stream_core.accel.frame_graph), opt-in; CUDA only
            from stream_core.accel.frame_graph import FrameGraph

            self._frame_graph = FrameGraph(self.pipeline, capture=True)

    def process(self, frames: np.ndarray | None, mix: float | None = None,
                control: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        """Run one stream call. ``frames``: (f, H, W, 3) uint8, or None for txt2img.

        ``mix`` (0..1) blends the output with the input frames on the device (1 or None: the
        output alone). ``control``: None, or one entry per ControlNet in config order: None (this
        call's input frames are the control image) or an (f, H', W', 3) uint8 RGB array of any
        size (resized on the device). Returns (f, H, W, 3) uint8.
        """
        return self.process_async(frames, mix, control).result()

    def _control_tensors(self, control: Sequence[np.ndarray | None] | None) -> list[torch.Tensor | None] | None:
        """uint8 control frames -> (f, 3, H', W') in [0, 1] on the device (checked first)."""
        if control is None:
            return None
        entries = list(control)
        count = self.pipeline.controlnet_count
        if len(entries) != count:
            raise ValueError(f"control should have one entry per ControlNet ({count}) but has {len(entries)}")
        f = self.pipeline.f
        checked: list[np.ndarray | None] = []
        for k, c in enumerate(entries):
            if c is None:
                checked.append(None)
                continue
            if not isinstance(c, np.ndarray):
                raise ValueError(f"control frame {k} should be a uint8 array, not {type(c).__name__}")
            c = _check_frames(c)
            if c.shape[0] != f:
                raise ValueError(f"control frame {k} has {c.shape[0]} frame(s) but the pipeline takes {f} per call")
            checked.append(c)
        if self._control_upload is None:
            self._control_upload = [_Uploader(self.runner.device) for _ in range(count)]
        out: list[torch.Tensor | None] = []
        for k, c in enumerate(checked):
            if c is None:
                out.append(None)
                continue
            t = self._control_upload[k](c)
            if not self._cuda:
                t = t.to(self.runner.device)
            out.append(t.permute(0, 3, 1, 2).to(self.runner.dtype).mul_(1.0 / 255.0))
        return out

    def process_async(self, frames: np.ndarray | None, mix: float | None = None,
                      control: Sequence[np.ndarray | None] | None = None) -> PendingFrame:
        """:meth:`process` without waiting for the download: the returned frame's ``ready()``
        polls it and ``result()`` waits for it."""
        if mix is not None:
            mix = float(mix)
            if not 0.0 <= mix <= 1.0:
                raise ValueError(f"mix should be within 0..1 but is {mix!r}")
            if frames is None and mix < 1.0:
                raise ValueError("mix below 1 blends with the input frames, but there are none (txt2img)")
        control_t = self._control_tensors(control)
        images = dry = None
        if frames is not None:
            dry = self._upload(_check_frames(frames))
            if not self._cuda:
                dry = dry.to(self.runner.device)
            images = unpack_rgb(dry, self.runner.dtype)
        if self._frame_graph is not None:
            packed, finite = self._frame_graph(images, control_t)
        else:
            out = self.pipeline(images, control_t)
            finite = torch.isfinite(out).all()
            packed = pack_rgb(out)
        if mix is not None and mix < 1.0 and dry is not None:
            packed = mix_rgb(dry, packed, mix)
        return self._download(packed, finite)

    def _download(self, packed: torch.Tensor, finite: torch.Tensor) -> PendingFrame:
        if packed.device.type != "cuda":
            return PendingFrame(packed.cpu(), finite.cpu(), None, self)
        i = self._down_slot
        self._down_slot ^= 1
        old = self._down_pending[i]
        if old is not None:  # its pinned buffer is about to be reused: hand its frame over first
            old.wait()
        bufs = self._down[i]
        if bufs is None or tuple(bufs[0].shape) != tuple(packed.shape):
            bufs = self._down[i] = (torch.empty(packed.shape, dtype=torch.uint8, pin_memory=True),
                                    torch.empty((), dtype=torch.bool, pin_memory=True))
        host, flag = bufs
        host.copy_(packed, non_blocking=True)
        flag.copy_(finite, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(packed.device))
        pending = PendingFrame(host, flag, event, self)
        self._down_pending[i] = pending
        return pending
