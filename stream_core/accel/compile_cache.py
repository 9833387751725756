"""Persisted torch.compile (inductor) artefacts, one folder per complete key.

Inductor compiles for tens of seconds (45-55 s for sd-turbo on an H200, about 2 minutes for the
tiny model on a 2-core CPU). Its on-disk caches (the FX graph cache, the AOTAutograd cache, the
generated C++/Triton kernels) make a second compile of the same graphs fast, but by default they
live in a temporary folder shared by everything on the machine. Here they are pointed at a folder
under the engine cache named by the digest of everything that changes the compiled code::

    <cache>/inductor/<compile mode>-<16 hex>/
        key.json      the key fields (written first)
        ready.json    written after a complete, successful warm-up: the artefacts are usable
        fxgraph/ aotautograd/ triton/ ...   inductor's own cache files

``ready.json`` is what "the compiled artefact exists" means for ``allow_build``: without it a start
with ``allow_build: false`` is refused (nothing compiles at a show unless the config says so).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stream_core.accel.cache import atomic_write_bytes

log = logging.getLogger(__name__)

FOLDER = "inductor"
READY = "ready.json"


def device_identity(device: torch.device) -> str:
    """GPU name and compute capability (``NVIDIA H200/sm90``), ``mps`` or ``cpu-<machine>``."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        return f"{torch.cuda.get_device_name(idx)}/sm{major}{minor}"
    if device.type == "cpu":
        return f"cpu-{platform.machine() or 'unknown'}"
    return device.type


@dataclass(frozen=True)
class CompileKey:
    """Everything that changes inductor's output for one stream configuration."""

    model: str
    vae: str
    loras: tuple[tuple[str, float], ...]
    width: int
    height: int
    batch: int
    steps: int | None
    frame_buffer: int
    cfg_type: str | None
    dtype: str
    torch: str
    cuda: str
    device: str
    compile_mode: str
    cuda_graphs: bool
    channels_last: bool
    attention: str = "sdpa"
    fp8: bool = False
    #: the ControlNets compiled with the runner (left out of the digest when there are none)
    controlnets: tuple[str, ...] = ()

    def fields(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["loras"] = [[s, float(w)] for s, w in self.loras]
        if self.controlnets:
            d["controlnets"] = list(self.controlnets)
        else:
            del d["controlnets"]
        return d

    def digest(self) -> str:
        canonical = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def stem(self) -> str:
        return f"{self.compile_mode}-{self.digest()[:16]}"


def compile_key(identity: Any, shape: Any, *, dtype: torch.dtype, device: torch.device, compile_mode: str,
                cuda_graphs: bool, channels_last: bool, attention: str = "sdpa",
                fp8: bool = False) -> CompileKey:
    """The key of one compiled runner: model identity (``cache.ModelIdentity``), LoRAs, shapes
    (``engines.StreamShape``), dtype, torch and CUDA versions, the GPU, compile mode and options."""
    return CompileKey(
        model=identity.model, vae=identity.vae, loras=tuple(identity.loras), width=shape.width,
        height=shape.height, batch=shape.batch, steps=shape.steps, frame_buffer=shape.frame_buffer,
        cfg_type=shape.cfg_type, dtype=str(dtype).removeprefix("torch."), torch=torch.__version__,
        cuda=str(torch.version.cuda or "none"), device=device_identity(device), compile_mode=compile_mode,
        cuda_graphs=bool(cuda_graphs), channels_last=bool(channels_last),
        attention=attention, fp8=bool(fp8), controlnets=tuple(getattr(identity, "controlnets", ()) or ()),
    )


class CompiledArtefacts:
    """The per-key inductor cache folder and its ready marker."""

    def __init__(self, cache_root: Path | str, key: CompileKey) -> None:
        self.key = key
        self.folder = Path(cache_root) / FOLDER / key.stem

    def ready(self) -> bool:
        """True when a complete warm-up of this key finished and wrote its marker."""
        try:
            data = json.loads((self.folder / READY).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and data.get("digest") == self.key.digest()

    def prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / "key.json", json.dumps(
            {"digest": self.key.digest(), "key": self.key.fields()}, indent=1, sort_keys=True).encode())

    def mark_ready(self, seconds: float) -> None:
        atomic_write_bytes(self.folder / READY, json.dumps(
            {"digest": self.key.digest(), "warm_up_seconds": round(seconds, 2), "created": time.time()},
            sort_keys=True).encode())

    def populated(self) -> bool:
        """Whether inductor wrote anything besides the markers (for tests and diagnostics)."""
        if not self.folder.is_dir():
            return False
        return any(p.name not in ("key.json", READY) for p in self.folder.iterdir())


@contextlib.contextmanager
def inductor_cache(folder: Path) -> Iterator[None]:
    """Point inductor's on-disk caches at ``folder`` (and enable them) for the duration.

    Sets ``TORCHINDUCTOR_CACHE_DIR`` (inductor's FX graph cache, AOTAutograd cache and generated
    kernels live under it) and ``TRITON_CACHE_DIR`` (Triton's compiled kernels), turns on
    ``torch._inductor.config.fx_graph_cache`` and ``torch._functorch.config.enable_autograd_cache``,
    and clears inductor's in-memory caches on the way in and out so nothing leaks between keys.
    """
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor.utils import clear_caches

    folder.mkdir(parents=True, exist_ok=True)
    names = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
    saved = {n: os.environ.get(n) for n in names}
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder.resolve())
    os.environ["TRITON_CACHE_DIR"] = str((folder / "triton").resolve())
    clear_caches()
    try:
        with inductor_config.patch(fx_graph_cache=True), functorch_config.patch(enable_autograd_cache=True):
            yield
    finally:
        clear_caches()
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v
