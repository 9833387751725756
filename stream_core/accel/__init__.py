"""Acceleration backends behind one factory: ``build_runner(components, acceleration, ...)``.

``acceleration``:

* ``auto`` — the default: what measured fastest on this device (:mod:`stream_core.accel.auto`),
  resolved by :func:`choose_acceleration` before ``build_runner`` is called.
* ``none`` — eager PyTorch (:class:`stream_core.runner.TorchRunner`).
* ``compile`` — CUDA graphs of the U-Net and TAESD calls on CUDA, optionally over torch.compile;
  torch.compile (inductor) on the CPU.
* ``onnxruntime`` — ONNX Runtime sessions (CPU, or CUDA with ``onnxruntime-gpu``) over exported
  graphs kept in the engine cache.
* ``tensorrt`` — TensorRT 10+ fp16 engines kept in the engine cache (imported lazily).

Names are imported on first use (PEP 562), so ``import stream_core.accel`` costs nothing and
the cache tools (``engines list/verify``) never import torch. Nothing imports TensorRT, ONNX
Runtime or the ONNX exporter until a backend needs it, and a backend that cannot run raises
:class:`BackendUnavailableError` instead of falling back.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, for type checkers and IDEs
    from stream_core.accel.auto import AccelChoice, choose_acceleration, machine_choice
    from stream_core.accel.cache import (
        CachedEngine,
        EngineCache,
        EngineKey,
        EntryStatus,
        HashMemo,
        ModelIdentity,
        default_cache_dir,
        identify,
    )
    from stream_core.accel.compile_cache import (
        CompiledArtefacts,
        CompileKey,
        compile_key,
        inductor_cache,
    )
    from stream_core.accel.engines import (
        ACCELERATIONS,
        AccelOptions,
        StreamShape,
        build_engines,
        build_runner,
        build_text_encoder,
        engine_key,
        unet_batch,
    )
    from stream_core.accel.errors import (
        AccelError,
        BackendUnavailableError,
        EngineBuildError,
        EngineMissingError,
        EngineVerifyError,
    )

_EXPORTS: dict[str, str] = {
    "AccelChoice": "auto",
    "choose_acceleration": "auto",
    "machine_choice": "auto",
    "CompiledArtefacts": "compile_cache",
    "CompileKey": "compile_cache",
    "compile_key": "compile_cache",
    "inductor_cache": "compile_cache",
    "CachedEngine": "cache",
    "EngineCache": "cache",
    "EngineKey": "cache",
    "EntryStatus": "cache",
    "HashMemo": "cache",
    "ModelIdentity": "cache",
    "default_cache_dir": "cache",
    "identify": "cache",
    "ACCELERATIONS": "engines",
    "AccelOptions": "engines",
    "StreamShape": "engines",
    "build_engines": "engines",
    "build_runner": "engines",
    "build_text_encoder": "engines",
    "engine_key": "engines",
    "unet_batch": "engines",
    "AccelError": "errors",
    "BackendUnavailableError": "errors",
    "EngineBuildError": "errors",
    "EngineMissingError": "errors",
    "EngineVerifyError": "errors",
}

__all__ = [
    "ACCELERATIONS",
    "AccelChoice",
    "AccelError",
    "AccelOptions",
    "BackendUnavailableError",
    "CachedEngine",
    "CompileKey",
    "CompiledArtefacts",
    "EngineBuildError",
    "EngineCache",
    "EngineKey",
    "EngineMissingError",
    "EngineVerifyError",
    "EntryStatus",
    "HashMemo",
    "ModelIdentity",
    "StreamShape",
    "build_engines",
    "build_runner",
    "build_text_encoder",
    "choose_acceleration",
    "compile_key",
    "default_cache_dir",
    "engine_key",
    "identify",
    "inductor_cache",
    "machine_choice",
    "unet_batch",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
