"""TensorRT 10+ engines: build from ONNX, run through the named-tensor API.

* Imported lazily: ``import stream_core.accel`` never imports ``tensorrt``.
* Build: ONNX parser -> builder config (fp16, workspace limit checked against free VRAM with
  ``torch.cuda.mem_get_info`` first) -> ``build_serialized_network``. Progress is reported through an
  ``IProgressMonitor`` subclass (phases and steps, logged), or by logged phases where the class
  is missing.
* Run: ``set_input_shape`` + ``set_tensor_address`` once for I/O buffers that are torch tensors
  allocated once; each call copies the inputs in and runs ``execute_async_v3`` on torch's current
  CUDA stream, optionally replaying a CUDA graph of that call.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch

from stream_core.accel.errors import BackendUnavailableError, EngineBuildError, missing_package
from stream_core.accel.graph_runner import copy_feeds

log = logging.getLogger(__name__)

MIN_MAJOR = 10
DEFAULT_WORKSPACE = 4 << 30
MIN_WORKSPACE = 1 << 30


def import_tensorrt() -> Any:
    """``tensorrt`` (>= 10) or a :class:`BackendUnavailableError` that says what to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise missing_package("tensorrt", "tensorrt", exc) from None
    except OSError as exc:  # the bindings import but the TensorRT libraries are missing
        raise BackendUnavailableError(
            f"the tensorrt package is installed but its libraries cannot be loaded ({exc}). "
            'Reinstall it with: pip install --force-reinstall "streambridge[tensorrt]" '
            "(the TensorRT wheels fetch their libraries from NVIDIA's package index)"
        ) from None
    version = str(getattr(trt, "__version__", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_MAJOR:
        raise BackendUnavailableError(
            f"TensorRT {version} is too old: the tensorrt backend uses the TensorRT 10 tensor API. "
            'Upgrade with: pip install -U "streambridge[tensorrt]"'
        )
    return trt


def require_cuda(what: str = "acceleration 'tensorrt'") -> torch.device:
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"{what} needs an NVIDIA GPU with CUDA, but this torch build sees none "
            f"(torch {torch.__version__}). Install a CUDA build of torch, or use acceleration: "
            "onnxruntime (CPU) / none."
        )
    return torch.device("cuda", torch.cuda.current_device())


def trt_version() -> str:
    return str(import_tensorrt().__version__)


def device_arch(device: torch.device | None = None) -> str:
    """``sm<major><minor>`` of the GPU (engines only run on the architecture they were built for)."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
             trt.bool: torch.bool}
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    try:
        return table[dt]
    except KeyError:
        raise EngineBuildError(f"engine tensor type {dt} is not supported") from None


def _make_monitor(trt: Any, label: str) -> Any | None:
    """An ``IProgressMonitor`` that logs phases (with timings) and step progress, or None."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._lock = threading.Lock()
            self._start: dict[str, float] = {}
            self._steps: dict[str, int] = {}
            self._last_log: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._start[phase_name] = time.perf_counter()
                self._steps[phase_name] = int(num_steps)
                depth = 1 if parent_phase else 0
            log.info("%s: %s%s (%d steps)", label, "  " * depth, phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.perf_counter()
            with self._lock:
                total = self._steps.get(phase_name, 0)
                if total > 1 and now - self._last_log.get(phase_name, 0.0) > 5.0:
                    self._last_log[phase_name] = now
                    log.info("%s: %s %d/%d", label, phase_name, step + 1, total)
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                dt = time.perf_counter() - self._start.pop(phase_name, time.perf_counter())
            if dt > 1.0:
                log.info("%s: %s done in %.1f s", label, phase_name, dt)

    return _Monitor()


def check_vram(onnx_bytes: int, workspace: int) -> int:
    """Free-VRAM check before a build. Returns the workspace to use (maybe reduced, logged)."""
    free, total = torch.cuda.mem_get_info()
    # the builder holds the weights (fp16) at least twice while it times tactics
    need_fixed = 2 * onnx_bytes + (256 << 20)
    gib = 1 << 30
    if free < need_fixed + MIN_WORKSPACE:
        raise EngineBuildError(
            f"not enough free GPU memory to build: {free / gib:.1f} GiB free of {total / gib:.1f} GiB, "
            f"the build needs about {(need_fixed + MIN_WORKSPACE) / gib:.1f} GiB. Close other GPU "
            "programs (or the running daemon) and build with `streambridge engines build`."
        )
    usable = free - need_fixed
    if workspace > usable:
        log.warning("TensorRT workspace reduced from %.1f to %.1f GiB to fit free VRAM (%.1f GiB free)",
                    workspace / gib, usable / gib, free / gib)
        workspace = int(usable)
    log.info("TensorRT build: %.1f GiB VRAM free of %.1f GiB, workspace %.1f GiB", free / gib, total / gib,
             workspace / gib)
    return workspace


def build_engine(onnx_path: Path, *, label: str, workspace: int = DEFAULT_WORKSPACE, fp16: bool = True,
                 optimization_level: int | None = None) -> bytes:
    """Build a serialized engine from ``onnx_path`` (static shapes). Returns the plan bytes."""
    trt = import_tensorrt()
    require_cuda()
    onnx_bytes = sum(p.stat().st_size for p in onnx_path.parent.glob(onnx_path.name + "*"))
    workspace = check_vram(onnx_bytes, workspace)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    fp16_flag = getattr(trt.BuilderFlag, "FP16", None)
    strongly_typed = fp16_flag is None and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if strongly_typed:  # TensorRT without weak typing: precision comes from the (fp16) ONNX graph
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    log.info("%s: parsing %s", label, onnx_path.name)
    t0 = time.perf_counter()
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path.name}: {errors[:800]}")
    for i in range(network.num_inputs):
        shape = tuple(network.get_input(i).shape)
        if any(d < 0 for d in shape):
            raise EngineBuildError(f"{label}: input {network.get_input(i).name} has a dynamic shape {shape}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if fp16 and fp16_flag is not None:
        config.set_flag(fp16_flag)
    if optimization_level is not None:
        config.builder_optimization_level = int(optimization_level)
    monitor = _make_monitor(trt, label)
    if monitor is not None:
        config.progress_monitor = monitor
    else:
        log.info("%s: building (this TensorRT has no progress monitor; this can take minutes)", label)
    log.info("%s: %d layers, building %s engine", label, network.num_layers, "fp16" if fp16 else "fp32")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT failed to build the {label} engine (see the TensorRT messages above)")
    data = bytes(plan)
    log.info("%s: engine built in %.0f s (%.1f MB)", label, time.perf_counter() - t0, len(data) / 1e6)
    del monitor
    return data


class TrtGraph:
    """A deserialized engine with its I/O bound once to torch tensors on the GPU."""

    def __init__(self, plan: bytes, *, name: str, use_cuda_graph: bool = True) -> None:
        trt = import_tensorrt()
        self.device = require_cuda()
        self.name = name
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineBuildError(
                f"TensorRT could not load the {name} engine (built by another TensorRT version or for "
                "another GPU?). Rebuild it with `streambridge engines build`."
            )
        self.context = self.engine.create_execution_context()
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        for i in range(self.engine.num_io_tensors):
            tname = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(tname))
            if any(d < 0 for d in shape):
                raise EngineBuildError(f"{name}: tensor {tname} has a dynamic shape {shape}; engines must be static")
            buf = torch.empty(shape, dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(tname)), device=self.device)
            if self.engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT:
                if not self.context.set_input_shape(tname, shape):
                    raise EngineBuildError(f"{name}: set_input_shape({tname}, {shape}) was refused")
                self.inputs[tname] = buf
            else:
                self.outputs[tname] = buf
            if not self.context.set_tensor_address(tname, buf.data_ptr()):
                raise EngineBuildError(f"{name}: set_tensor_address({tname}) was refused")
        self.use_cuda_graph = use_cuda_graph
        self._graph: torch.cuda.CUDAGraph | None = None

    def bind_input(self, name: str, tensor: torch.Tensor) -> None:
        """Read input ``name`` from ``tensor`` (same shape, dtype and device) instead of the buffer
        allocated for it (e.g. two engines sharing one temporal bank); a captured CUDA graph is
        dropped and captured again on the next run, with the new address."""
        buf = self.inputs[name]
        if (tuple(tensor.shape), tensor.dtype, tensor.device) != (tuple(buf.shape), buf.dtype, buf.device) or \
                not tensor.is_contiguous():
            raise ValueError(f"{self.name}: cannot bind input '{name}' ({tuple(buf.shape)} {buf.dtype}) to a "
                             f"{tuple(tensor.shape)} {tensor.dtype} tensor on {tensor.device}")
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise EngineBuildError(f"{self.name}: set_tensor_address({name}) was refused")
        self.inputs[name] = tensor
        self._graph = None

    def _enqueue(self, stream: torch.cuda.Stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.name}")

    def _capture(self) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._enqueue(stream)  # TensorRT does its lazy set-up outside the capture
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                self._enqueue(stream)
        except Exception as exc:
            raise EngineBuildError(
                f"{self.name}: capturing a CUDA graph of execute_async_v3 failed ({exc}); "
                "run with the TensorRT CUDA-graph option off"
            ) from exc
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._graph = graph

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        copy_feeds(self, feeds, self.name)
        if self.use_cuda_graph:
            if self._graph is None:
                self._capture()
            assert self._graph is not None
            self._graph.replay()
        else:
            self._enqueue(torch.cuda.current_stream(self.device))
        return self.outputs
