"""Whole-frame capture: encode -> stream step maths -> decode -> output packing as one CUDA graph.

Per-call CUDA graphs (``compile`` backend) remove the launch cost inside the U-Net and the VAE,
but the step maths between them (a few dozen small kernels) and the packing still launch one by
one. :class:`FrameGraph` captures the whole frame instead, on static buffers: the input frame is
copied into a static tensor, the graph replays, and the packed uint8 frame and the finiteness
flag are read from static outputs (the engine then downloads them asynchronously).

It relies on the pipeline's hot path, :meth:`StreamPipeline.denoise`: once the stream is primed
it reads and writes only static buffers updated in place and never synchronises with the host,
and live setters (prompt, strength, guidance, seed, smoothing, morphs) write those buffers in place
between calls, so a replay sees them. The first calls (priming) run eagerly; the similarity
filter's decision stays outside the graph (on a skip nothing replays).

The runner's own calls must not be CUDA graphs themselves (graphs do not nest): use eager torch,
or ``compile`` with ``cuda_graphs=False`` (inductor kernels inside the frame graph). On a device
other than CUDA, ``capture=False`` runs the same body eagerly (what the CPU tests check).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from stream_core.accel.errors import BackendUnavailableError

log = logging.getLogger(__name__)


def pipeline_tensors(pipeline: Any) -> dict[str, torch.Tensor]:
    """Every tensor the pipeline holds directly (its stream state), by attribute name; tensors in
    a list attribute (one per ControlNet) as ``name[i]``; those of its temporal bank as
    ``temporal.<name>`` when it has one."""
    out: dict[str, torch.Tensor] = {}
    for k, v in vars(pipeline).items():
        if isinstance(v, torch.Tensor):
            out[k] = v
        elif isinstance(v, list) and v and all(isinstance(x, torch.Tensor) for x in v):
            out.update({f"{k}[{i}]": x for i, x in enumerate(v)})
    bank = getattr(pipeline, "temporal", None)
    if bank is not None:
        out.update({f"temporal.{k}": v for k, v in bank.tensors().items()})
    return out


@torch.inference_mode()
def snapshot(pipeline: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pipeline_tensors(pipeline).items()}


@torch.inference_mode()
def restore(pipeline: Any, saved: dict[str, torch.Tensor]) -> None:
    """Write ``saved`` back into the pipeline's tensors, in place (their addresses stay)."""
    current = pipeline_tensors(pipeline)
    for k, v in saved.items():
        cur = current.get(k)
        if isinstance(cur, torch.Tensor) and cur.shape == v.shape:
            cur.copy_(v)
        elif "[" not in k and "." not in k:
            setattr(pipeline, k, v)


class FrameGraph:
    """``frame(images) -> (packed uint8 (f, H, W, 3), finite flag)`` for one pipeline."""

    def __init__(self, pipeline: Any, *, capture: bool | None = None, warmup: int = 2) -> None:
        if not hasattr(pipeline, "denoise") or not hasattr(pipeline, "primed"):
            raise ValueError("whole-frame capture needs the pipeline's static hot path (StreamPipeline.denoise)")
        self.pipeline = pipeline
        self.runner = pipeline.runner
        self.device = torch.device(self.runner.device)
        if capture is None:
            capture = self.device.type == "cuda"
        if capture and self.device.type != "cuda":
            raise BackendUnavailableError(f"whole-frame CUDA graphs need the model on a CUDA GPU, not {self.device}")
        if capture and getattr(self.runner, "cuda_graphs", False):
            raise ValueError("the runner captures its own CUDA graphs and graphs do not nest: build it with "
                             "cuda_graphs=False (inductor kernels are captured inside the frame graph)")
        if not pipeline.settings.denoising_batch:
            raise ValueError("whole-frame capture runs the stream batch; denoising_batch: false is not captured")
        if getattr(pipeline, "temporal", None) is not None:
            pipeline.temporal.static = True  # a replay cannot take Python branches on live settings
        self.capture = capture
        self.warmup = warmup
        self.graph: Any = None
        self._static_in: torch.Tensor | None = None
        self._static_out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        # one captured graph per set of active ControlNets (turning one on or off live changes
        # which calls run; each set is captured once, on first use, and kept)
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}
        self._key: tuple[int, ...] = ()

    def _body(self, images: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from stream_core.engine import pack_rgb

        z = self.runner.encode(images) if images is not None else None
        out = self.runner.decode(self.pipeline.denoise(z)).clamp(-1.0, 1.0)
        return pack_rgb(out), torch.isfinite(out).all(), out

    def _capture(self, images: torch.Tensor | None) -> None:
        t0 = time.perf_counter()
        self._static_in = None if images is None else images.detach().clone()
        saved = snapshot(self.pipeline)
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # real calls: they advance the stream, undone below
                self._body(self._static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        restore(self.pipeline, saved)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._static_out = self._body(self._static_in)
        self.graph = graph
        log.info("whole-frame CUDA graph captured in %.1f s", time.perf_counter() - t0)

    def _select(self, key: tuple[int, ...]) -> None:
        """Make the graph for the active ControlNet set ``key`` current (None until captured)."""
        if key == self._key:
            return
        if self.graph is not None:
            self._graphs[self._key] = (self.graph, self._static_in, self._static_out)
        self.graph, self._static_in, self._static_out = self._graphs.pop(key, (None, None, None))
        self._key = key

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor | None, control: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.pipeline
        p.last_skipped = False
        check = getattr(p, "check_control", None)
        if check is not None:
            check(control, images is not None)
        if images is not None:
            images = p.admit(images, self._last is not None)
            if images is None:  # the similarity filter skips this call
                return self._last
        if check is not None:  # control images into their static buffers, outside the graph
            p.stage_control(control, images)
            self._select(tuple(p.controlnet_active))
        if not self.capture or not p.primed:
            packed, finite, out = self._body(images)
        else:
            if self.graph is None:
                self._capture(images)
            elif self._static_in is not None and images is not None:
                self._static_in.copy_(images)
            assert self.graph is not None and self._static_out is not None
            self.graph.replay()
            packed, finite, out = self._static_out
        p.calls += 1
        p._last_output = out
        self._last = (packed, finite)
        return packed, finite
