"""ONNX Runtime sessions with I/O binding onto static torch buffers.

CPU: inputs are copied into preallocated float32 tensors whose memory ONNX Runtime reads
directly, and it writes its outputs straight into preallocated tensors (no numpy round trip).
CUDA (``onnxruntime-gpu``): the same with device buffers, the session running on torch's
current stream (``user_compute_stream``) so no extra synchronisation is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from stream_core.accel.errors import BackendUnavailableError, EngineBuildError, missing_package
from stream_core.accel.graph_runner import copy_feeds

log = logging.getLogger(__name__)

_ORT_TYPES: dict[str, torch.dtype] = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(double)": torch.float64,
    "tensor(int64)": torch.int64,
    "tensor(int32)": torch.int32,
    "tensor(bool)": torch.bool,
}


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise missing_package("onnxruntime", "onnxruntime", exc) from None
    return onnxruntime


def ort_version() -> str:
    return str(import_ort().__version__)


def resolve_provider(provider: str, device: torch.device) -> str:
    """``auto`` -> ``cuda`` for CUDA components, else ``cpu``; checks that the provider exists."""
    ort = import_ort()
    if provider == "auto":
        provider = "cuda" if device.type == "cuda" else "cpu"
    if provider not in ("cpu", "cuda"):
        raise ValueError(f"onnxruntime provider should be auto, cpu or cuda but is {provider!r}")
    if provider == "cuda":
        if device.type != "cuda":
            raise BackendUnavailableError(
                "onnxruntime with the CUDA provider needs the model on a CUDA device (device: cuda)"
            )
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailableError(
                "onnxruntime's CUDAExecutionProvider is not available in this install "
                f"(providers: {', '.join(ort.get_available_providers())}). Install the GPU build: "
                "pip uninstall onnxruntime && pip install onnxruntime-gpu — or use device: cpu, or "
                "acceleration: tensorrt / compile on the GPU."
            )
    elif device.type != "cpu":
        raise BackendUnavailableError(
            f"onnxruntime with the CPU provider needs the model on the CPU, but it is on {device}"
        )
    return provider


class OrtGraph:
    """One ``InferenceSession`` with inputs/outputs bound to torch tensors allocated once."""

    def __init__(self, path: Path, *, provider: str = "cpu", device: torch.device | None = None,
                 threads: int | None = None) -> None:
        ort = import_ort()
        self.path = Path(path)
        self.device = device or torch.device("cpu")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
        # No busy-waiting between runs: the pipeline's own torch ops run between the graph calls,
        # and threads spinning on a few cores would take the CPU from them.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if provider == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            stream = torch.cuda.current_stream(self.device).cuda_stream
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index, "user_compute_stream": str(stream)})]
            device_type, device_id = "cuda", index
        else:
            providers = ["CPUExecutionProvider"]
            device_type, device_id = "cpu", 0
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as exc:
            raise EngineBuildError(f"onnxruntime cannot load {self.path.name}: {exc}") from exc
        if provider == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise BackendUnavailableError(f"onnxruntime did not enable CUDA for {self.path.name}")
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        for arg in self.session.get_inputs():
            self.inputs[arg.name] = torch.empty(_static(arg.shape, arg.name), dtype=_dtype(arg.type), device=self.device)
        out_shapes = self._output_shapes()
        for arg in self.session.get_outputs():
            self.outputs[arg.name] = torch.empty(out_shapes[arg.name], dtype=_dtype(arg.type), device=self.device)
        self.binding = self.session.io_binding()
        self._device_type, self._device_id = device_type, device_id
        for name, t in self.inputs.items():
            self.binding.bind_input(name, device_type, device_id, _np_dtype(t.dtype), list(t.shape), t.data_ptr())
        for name, t in self.outputs.items():
            self.binding.bind_output(name, device_type, device_id, _np_dtype(t.dtype), list(t.shape), t.data_ptr())

    def _output_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        unknown = False
        for arg in self.session.get_outputs():
            if all(isinstance(d, int) and d > 0 for d in arg.shape):
                shapes[arg.name] = tuple(arg.shape)
            else:
                unknown = True
        if unknown:  # shape inference left a symbol: run once on the (static) inputs to learn it
            feeds = {n: torch.ones_like(t).cpu().numpy() for n, t in self.inputs.items()}
            for arg, val in zip(self.session.get_outputs(), self.session.run(None, feeds), strict=True):
                shapes[arg.name] = tuple(val.shape)
        return shapes

    def bind_input(self, name: str, tensor: torch.Tensor) -> None:
        """Read input ``name`` from ``tensor`` (same shape, dtype and device) instead of the
        buffer allocated for it, from the next run on (e.g. two graphs sharing one temporal bank)."""
        buf = self.inputs[name]
        if (tuple(tensor.shape), tensor.dtype, tensor.device) != (tuple(buf.shape), buf.dtype, buf.device) or \
                not tensor.is_contiguous():
            raise ValueError(f"{self.path.name}: cannot bind input '{name}' ({tuple(buf.shape)} {buf.dtype}) to a "
                             f"{tuple(tensor.shape)} {tensor.dtype} tensor on {tensor.device}")
        self.binding.bind_input(name, self._device_type, self._device_id, _np_dtype(tensor.dtype), list(tensor.shape),
                                tensor.data_ptr())
        self.inputs[name] = tensor

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        copy_feeds(self, feeds, self.path.name)
        self.session.run_with_iobinding(self.binding)
        return self.outputs


def _static(shape: list[Any], name: str) -> tuple[int, ...]:
    if not all(isinstance(d, int) and d > 0 for d in shape):
        raise EngineBuildError(f"graph input '{name}' has a dynamic shape {shape}; graphs must be static")
    return tuple(shape)


def _dtype(ort_type: str) -> torch.dtype:
    try:
        return _ORT_TYPES[ort_type]
    except KeyError:
        raise EngineBuildError(f"unsupported graph tensor type {ort_type}") from None


def _np_dtype(dtype: torch.dtype) -> Any:
    import numpy as np

    return {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
            torch.int64: np.int64, torch.int32: np.int32, torch.bool: np.bool_}[dtype]
