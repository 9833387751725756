"""Ahead-of-time compiled calls (AOTInductor): compile once into a package file, load it later.

``torch.compile`` keeps its generated kernels on disk, but every new process still traces the
model again with dynamo before it can use them (on an H200: 60 s for the first start of sd-turbo,
still 16 s for the next ones). An AOTInductor package holds the compiled model whole (kernels,
wrapper code and weights): a later process loads it in about a second and traces nothing.

:class:`AotCall` wraps ``fn(*tensors) -> tensor`` (the U-Net, TAESD encode or decode call of
:class:`stream_core.accel.compiled.CompiledRunner`). On its first call it loads
``<folder>/<name>.pt2`` when that file exists, else exports ``fn`` at the call's static shapes
(``torch.export``, non-strict), compiles it with AOTInductor, writes the package atomically and
loads it. The modules ``fn`` reads its weights from are passed in so the export sees them as
parameters. A package that cannot be loaded (written by another torch, a damaged file) is an
error naming the file, never a silent rebuild or fall back.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from stream_core.accel.errors import BackendUnavailableError

log = logging.getLogger(__name__)

SUFFIX = ".pt2"


class _Exported(torch.nn.Module):
    """``fn`` as a module whose parameters are those of ``modules`` (what the export lifts)."""

    def __init__(self, fn: Callable[..., Any], modules: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.fn = fn
        self.parts = torch.nn.ModuleList(list(modules))

    def forward(self, *args: torch.Tensor) -> Any:
        return self.fn(*args)


class AotCall:
    """``fn(*tensors) -> tensor`` through an AOTInductor package (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any], name: str, modules: Sequence[torch.nn.Module],
                 folder: Path | str | None = None, *, single: bool = True) -> None:
        self.fn = fn
        self.single = single  # fn returns one tensor (else a list of tensors, e.g. ControlNet residuals)
        self.name = name
        self.modules = list(modules)
        self.folder = Path(folder) if folder is not None else None
        self.loaded: Callable[..., Any] | None = None
        #: "loaded" (an existing package) or "compiled" (built by this process), after the first call
        self.origin: str | None = None
        self.shapes: list[tuple[int, ...]] | None = None

    @property
    def package(self) -> Path:
        if self.folder is None:
            raise BackendUnavailableError(f"{self.name}: no folder for its ahead-of-time package was set")
        return self.folder / f"{self.name}{SUFFIX}"

    def __call__(self, *args: torch.Tensor) -> Any:
        if self.loaded is None:
            self._prepare(args)
        elif self.shapes is not None and [tuple(a.shape) for a in args] != self.shapes:
            raise ValueError(f"{self.name}: called with shapes {[tuple(a.shape) for a in args]} but compiled "
                             f"ahead of time for {self.shapes}; a new shape needs a new runner")
        assert self.loaded is not None
        out = self.loaded(*args)
        if not self.single:
            return list(out)
        if isinstance(out, (list, tuple)):  # a package returns the flattened outputs
            out = out[0]
        return out

    def _prepare(self, args: tuple[torch.Tensor, ...]) -> None:
        path = self.package
        self.shapes = [tuple(a.shape) for a in args]
        if path.is_file():
            self.loaded = self._load(path)
            self.origin = "loaded"
            return
        self._build(path, args)
        self.loaded = self._load(path)
        self.origin = "compiled"

    def _load(self, path: Path) -> Callable[..., Any]:
        t0 = time.perf_counter()
        try:
            loaded = torch._inductor.aoti_load_package(str(path))
        except Exception as exc:
            raise BackendUnavailableError(
                f"{self.name}: the ahead-of-time package {path} cannot be loaded ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}); delete it to compile "
                "it again"
            ) from exc
        log.info("%s: ahead-of-time package loaded in %.1f s", self.name, time.perf_counter() - t0)
        return loaded

    def _build(self, path: Path, args: tuple[torch.Tensor, ...]) -> None:
        t0 = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        module = _Exported(self.fn, self.modules).eval()
        # export outside inference mode (the runner's calls run inside it): plain clones of the
        # example inputs, no autograd
        with torch.inference_mode(False), torch.no_grad():
            examples = tuple(a.clone() for a in args)
            try:
                program = torch.export.export(module, examples, strict=False)
            except Exception as exc:
                raise BackendUnavailableError(
                    f"{self.name}: torch.export could not capture this model for ahead-of-time compiling "
                    f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''})"
                ) from exc
            t1 = time.perf_counter()
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{SUFFIX}")
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
                os.replace(tmp, path)
            except Exception as exc:
                tmp.unlink(missing_ok=True)
                hint = ""
                if args and args[0].device.type == "cpu":
                    hint = " (on the CPU it needs a working C++ compiler)"
                raise BackendUnavailableError(
                    f"{self.name}: AOTInductor could not compile it{hint}: {type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
                ) from exc
        log.info("%s: compiled ahead of time in %.1f s (export %.1f s) -> %s", self.name,
                 time.perf_counter() - t0, t1 - t0, path)
