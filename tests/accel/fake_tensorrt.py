"""FakeTensorRT: a stand-in for the ``tensorrt`` module, for tests on machines without a GPU.

It is NOT TensorRT. It follows the documented TensorRT 10/11 Python API that
``stream_core.accel.tensorrt_backend`` uses, and nothing else:

* build side: ``Logger``, ``Builder.create_network(flags)`` / ``create_builder_config()`` /
  ``build_serialized_network(network, config)``, ``OnnxParser.parse_from_file`` / ``num_errors`` /
  ``get_error``, ``INetworkDefinition.num_inputs`` / ``get_input(i)`` / ``num_layers``,
  ``IBuilderConfig.set_memory_pool_limit`` / ``set_flag`` / ``builder_optimization_level`` /
  ``progress_monitor``, ``IProgressMonitor`` (the builder calls ``phase_start``, ``step_complete``,
  ``phase_finish`` as TensorRT does);
* run side: ``Runtime.deserialize_cuda_engine`` (``None`` for a plan it cannot read, as TensorRT
  returns), ``ICudaEngine.num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_shape`` /
  ``get_tensor_dtype`` / ``get_tensor_mode``, ``IExecutionContext.set_input_shape`` /
  ``set_tensor_address`` / ``execute_async_v3(stream_handle)``.

``version=11`` mirrors TensorRT 11, whose ``BuilderFlag`` has no ``FP16`` (networks are always
strongly typed: precision comes from the ONNX graph); ``version=10`` has ``BuilderFlag.FP16``.

The "engine" is the ONNX graph itself, run by onnxruntime on the CPU. Like TensorRT it reads its
inputs from, and writes its outputs to, the raw addresses bound with ``set_tensor_address``, so a
runner that rebinds, reallocates or reads the wrong buffer gets wrong numbers. ``calls`` records
what was asked of it.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"FAKETRT1"


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    INT32 = "int32"
    INT64 = "int64"
    INT8 = "int8"
    BOOL = "bool"
    BF16 = "bfloat16"


_ONNX_TO_DT = {1: DataType.FLOAT, 10: DataType.HALF, 6: DataType.INT32, 7: DataType.INT64, 3: DataType.INT8,
               9: DataType.BOOL, 16: DataType.BF16}
_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32, DataType.INT64: np.int64,
       DataType.INT8: np.int8, DataType.BOOL: np.bool_}


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class Logger:
    VERBOSE, INFO, WARNING, ERROR = 4, 3, 2, 1

    def __init__(self, severity: int = 2) -> None:
        self.min_severity = severity


class IProgressMonitor:
    def __init__(self) -> None:
        self.fake_initialised = True


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.onnx_bytes = b""
        self.num_layers = 0

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> ITensor:
        return self.inputs[i]


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self.network = network
        self._errors: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, i: int) -> str:
        return self._errors[i]

    def parse_from_file(self, path: str) -> bool:
        import onnx

        try:
            model = onnx.load(path)  # with its external data, as TensorRT's parser reads it
        except Exception as exc:
            self._errors.append(f"ModelImporter: failed to parse the ONNX model: {type(exc).__name__}")
            return False

        def tensors(values: Any) -> list[ITensor]:
            out = []
            for v in values:
                t = v.type.tensor_type
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
                out.append(ITensor(v.name, dims, _ONNX_TO_DT[t.elem_type]))
            return out

        initialisers = {i.name for i in model.graph.initializer}
        self.network.inputs = [t for t in tensors(model.graph.input) if t.name not in initialisers]
        self.network.outputs = tensors(model.graph.output)
        self.network.num_layers = len(model.graph.node)
        self.network.onnx_bytes = model.SerializeToString()
        return True


class IBuilderConfig:
    def __init__(self) -> None:
        self.pool_limits: dict[Any, int] = {}
        self.flags: set[Any] = set()
        self.builder_optimization_level = 3
        self.progress_monitor: IProgressMonitor | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pool_limits[pool] = int(size)

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag)


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger
        self.module: FakeTensorRT | None = None

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        net = INetworkDefinition(flags)
        if self.module is not None:
            self.module.calls.append(("create_network", flags))
        return net

    def create_builder_config(self) -> IBuilderConfig:
        config = IBuilderConfig()
        if self.module is not None:
            self.module.configs.append(config)
        return config

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
        monitor = config.progress_monitor
        phases = (("Building engine", None, 2), ("Tactic timing", "Building engine", 3))
        for name, parent, steps in phases:
            if monitor is not None:
                monitor.phase_start(name, parent, steps)
        for step in range(3):
            if monitor is not None and not monitor.step_complete("Tactic timing", step):
                return None  # cancelled
        for name, _, _ in reversed(phases):
            if monitor is not None:
                monitor.phase_finish(name)
        if self.module is not None and self.module.fail_build:
            return None
        header = {"inputs": [[t.name, list(t.shape), t.dtype.value] for t in network.inputs],
                  "outputs": [[t.name, list(t.shape), t.dtype.value] for t in network.outputs]}
        head = json.dumps(header).encode()
        return MAGIC + len(head).to_bytes(4, "little") + head + network.onnx_bytes


class ICudaEngine:
    def __init__(self, header: dict[str, Any], onnx_bytes: bytes, module: FakeTensorRT) -> None:
        self._io: dict[str, tuple[tuple[int, ...], DataType, TensorIOMode]] = {}
        for key, mode in (("inputs", TensorIOMode.INPUT), ("outputs", TensorIOMode.OUTPUT)):
            for name, shape, dt in header[key]:
                self._io[name] = (tuple(shape), DataType(dt), mode)
        self._names = list(self._io)
        self._onnx = onnx_bytes
        self._module = module

    @property
    def num_io_tensors(self) -> int:
        return len(self._names)

    def get_tensor_name(self, i: int) -> str:
        return self._names[i]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._io[name][0]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._io[name][1]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._io[name][2]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        import onnxruntime as ort

        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self._session = ort.InferenceSession(engine._onnx, opts, providers=["CPUExecutionProvider"])
        self.calls = engine._module.calls

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        want, _, mode = self.engine._io.get(name, ((), None, TensorIOMode.NONE))
        if mode != TensorIOMode.INPUT or tuple(shape) != want:
            return False
        self.input_shapes[name] = tuple(shape)
        self.calls.append(("set_input_shape", name, tuple(shape)))
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self.engine._io or not isinstance(address, int) or address == 0:
            return False
        self.addresses[name] = address
        self.calls.append(("set_tensor_address", name, address))
        return True

    def _view(self, name: str) -> np.ndarray:
        shape, dt, _ = self.engine._io[name]
        dtype = np.dtype(_NP[dt])
        n = int(np.prod(shape)) * dtype.itemsize
        raw = (ctypes.c_char * n).from_address(self.addresses[name])
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.calls.append(("execute_async_v3", stream_handle))
        io = self.engine._io
        if set(self.addresses) != set(io):
            return False  # TensorRT: "not all I/O tensor addresses are set"
        if any(mode == TensorIOMode.INPUT and name not in self.input_shapes for name, (_, _, mode) in io.items()):
            return False
        feeds = {name: self._view(name).copy() for name, (_, _, mode) in io.items() if mode == TensorIOMode.INPUT}
        outs = self._session.run(None, feeds)
        for meta, value in zip(self._session.get_outputs(), outs, strict=True):
            target = self._view(meta.name)
            np.copyto(target, value.astype(target.dtype, copy=False))
        return True


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.module: FakeTensorRT | None = None

    def deserialize_cuda_engine(self, plan: bytes) -> ICudaEngine | None:
        plan = bytes(plan)
        if not plan.startswith(MAGIC) or len(plan) < len(MAGIC) + 4:
            return None
        n = int.from_bytes(plan[len(MAGIC):len(MAGIC) + 4], "little")
        try:
            header = json.loads(plan[len(MAGIC) + 4:len(MAGIC) + 4 + n])
        except ValueError:
            return None
        assert self.module is not None
        return ICudaEngine(header, plan[len(MAGIC) + 4 + n:], self.module)


class FakeTensorRT(types.ModuleType):
    """The module object to put in ``sys.modules["tensorrt"]``."""

    def __init__(self, version: int = 11) -> None:
        super().__init__("tensorrt")
        self.__version__ = "11.4.0.106" if version >= 11 else "10.13.3.9"
        self.calls: list[tuple[Any, ...]] = []
        self.configs: list[IBuilderConfig] = []
        self.fail_build = False
        flags = {"TF32": 1, "DEBUG": 2}
        if version < 11:
            flags["FP16"] = 0
        self.BuilderFlag = enum.Enum("BuilderFlag", flags)
        self.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
        self.MemoryPoolType = MemoryPoolType
        self.TensorIOMode = TensorIOMode
        self.IProgressMonitor = IProgressMonitor
        self.Logger = Logger
        self.OnnxParser = OnnxParser
        for attr, dt in (("float32", DataType.FLOAT), ("float16", DataType.HALF), ("int32", DataType.INT32),
                         ("int64", DataType.INT64), ("int8", DataType.INT8), ("bool", DataType.BOOL),
                         ("bfloat16", DataType.BF16)):
            setattr(self, attr, dt)
        module = self

        class _Builder(Builder):
            def __init__(self, logger: Logger) -> None:
                super().__init__(logger)
                self.module = module

        class _Runtime(Runtime):
            def __init__(self, logger: Logger) -> None:
                super().__init__(logger)
                self.module = module

        self.Builder = _Builder
        self.Runtime = _Runtime


def onnx_with_dynamic_input(path: Path) -> Path:
    """A one-node ONNX graph whose input has a symbolic batch dimension."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("latents", TensorProto.FLOAT, ["batch", 4, 8, 8])
    y = helper.make_tensor_value_info("eps", TensorProto.FLOAT, ["batch", 4, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["latents"], ["eps"])], "dyn", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path
