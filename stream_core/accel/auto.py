"""``acceleration: auto``: pick the backend that measured fastest on this device, and say why.

The rules, from the figures in BENCHMARKS.md / docs/acceleration.md:

* **CUDA**: TensorRT when verified engines for this exact configuration are already cached (and
  TensorRT imports); otherwise ``compile`` in mode ``inductor`` with CUDA graphs (H200, sd-turbo
  1 step: eager 31 fps, CUDA graphs 79, inductor + graphs 145). Its compiled artefacts persist per
  key in the cache. With ``allow_build`` unset the first start compiles them (with progress; a
  minute or so) and every later start reuses them; with ``allow_build: false`` a missing one is a
  start-up error naming ``streambridge engines build``. Nothing ever compiles mid-show: the shapes
  are static and fixed at start-up.
* **MPS**: eager (``none``): TensorRT, CUDA graphs and the ONNX Runtime CUDA provider do not exist
  there and no compiled MPS path has been measured faster.
* **CPU**: ``onnxruntime`` when it is installed and the exported graphs for this configuration are
  cached, or ``allow_build`` lets them be exported at start-up (seconds; measured 3.4x faster than
  eager for the tiny model, 1.8x for the small one); otherwise eager. Never inductor: its cold
  compile takes minutes on a CPU.
* Sequential denoising (``denoising_batch: false``) runs the U-Net at several batch sizes, which
  no static-shape backend takes: eager.

Only ``auto`` chooses. An explicitly requested backend is used as asked or fails with its own
error; nothing falls back from it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

#: what "auto" may resolve to
AUTO = "auto"


@dataclass(frozen=True)
class AccelChoice:
    """The backend a configuration runs on, and why."""

    requested: str
    backend: str
    reason: str
    compile_mode: str | None = None
    device: str = "cpu"

    @property
    def label(self) -> str:
        """``compile (inductor)``, ``onnxruntime``, ... as shown to users."""
        return f"{self.backend} ({self.compile_mode})" if self.compile_mode else self.backend

    def as_dict(self) -> dict[str, Any]:
        """For the status page and ``doctor``: requested, backend, compile_mode, device, reason."""
        return {"requested": self.requested, "backend": self.backend, "compile_mode": self.compile_mode,
                "device": self.device, "reason": self.reason}

    def summary(self) -> str:
        """One line: ``acceleration auto -> compile (inductor) on cuda: <reason>``."""
        return f"acceleration {self.requested} -> {self.label} on {self.device}: {self.reason}"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _engines_cached(components: Any, backend: str, shape: Any, cache_dir: Path, options: Any,
                    temporal: int = 0) -> bool:
    """Whether verified ``backend`` engines for every runner graph of this exact key are cached
    (``temporal`` > 0: the U-Net graphs that carry a temporal bank of that built size).

    Returns False at once (no import of the runtime, no hashing) when the cache has no U-Net entry
    of that backend at all, so a machine with an empty cache pays nothing.
    """
    from stream_core.accel.cache import BACKEND_DIRS, EngineCache, identify
    from stream_core.accel.engines import _runner_specs, _spec_key, _target
    from stream_core.accel.errors import AccelError
    from stream_core.accel.export import text_shape

    folder = Path(cache_dir) / BACKEND_DIRS[backend]
    if not any(folder.glob("unet_tmp-*.json" if temporal else "unet-*.json")):
        return False
    try:
        target = _target(backend, components, options)
        specs = _runner_specs(components, shape, options, int(temporal))  # what build_runner loads
    except (AccelError, ValueError) as exc:
        log.debug("auto: %s engines unusable here: %s", backend, exc)
        return False
    cache = EngineCache(cache_dir)
    identity = identify(components, cache.memo())
    text = text_shape(components)
    return all(cache.lookup(_spec_key(identity, target, spec, shape, text, options.exporter)).entry is not None
               for spec in specs.values())


def choose_acceleration(components: Any, requested: str, *, shape: Any, cache_dir: Path | str, allow_build: bool,
                        denoising_batch: bool = True, options: Any = None, temporal: int = 0) -> AccelChoice:
    """Resolve ``requested`` (``auto`` or an explicit backend) for ``components`` on their device.

    ``shape`` is the stream's :class:`~stream_core.accel.engines.StreamShape`. An explicit backend
    comes back unchanged (its own errors come later, from ``build_runner``). ``temporal``: a
    temporal bank (``stream_core.temporal``) of that built size will be installed. Every backend
    carries it (eager, ``compile`` capturing/compiling the U-Net with it, ONNX Runtime and TensorRT
    running U-Net graphs that take it as inputs); ``auto`` takes inductor + CUDA graphs on CUDA
    and, on the CPU, ONNX Runtime under the same conditions as without a bank (its graphs with the
    bank cached, or allow_build), else eager.
    """
    from stream_core.accel.engines import ACCELERATIONS, AccelOptions

    options = options or AccelOptions()
    device: torch.device = components.device
    dev = device.type
    if requested != AUTO:
        if requested not in ACCELERATIONS:
            raise ValueError(f"acceleration should be auto or one of {', '.join(ACCELERATIONS)} but is {requested!r}")
        mode = (options.compile_mode or ("graphs" if dev == "cuda" else "inductor")) if requested == "compile" else None
        return AccelChoice(requested, requested, "asked for explicitly", mode, dev)
    cache_dir = Path(cache_dir)
    if not denoising_batch:
        return AccelChoice(AUTO, "none", "sequential denoising (denoising_batch: false) runs the U-Net at several "
                           "batch sizes, which the static-shape backends cannot", None, dev)
    if temporal:
        if dev == "cuda":
            return AccelChoice(AUTO, "compile", "the temporal bank lives in the U-Net's attention: inductor + CUDA "
                               "graphs, captured with the bank in place (TensorRT carries it too, when asked for "
                               "explicitly)", "inductor", dev)
    if dev == "cuda":
        if _installed("tensorrt") and _engines_cached(components, "tensorrt", shape, cache_dir, options):
            return AccelChoice(AUTO, "tensorrt", "verified TensorRT engines for this exact configuration are cached",
                               None, dev)
        why = ("inductor + CUDA graphs measured fastest without TensorRT (H200, sd-turbo 1 step: 145 fps vs 79 "
               "with CUDA graphs alone and 31 eager)")
        return AccelChoice(AUTO, "compile", why, "inductor", dev)
    if dev == "mps":
        return AccelChoice(AUTO, "none", "eager on Apple GPUs: CUDA graphs, TensorRT and the ONNX Runtime CUDA "
                           "provider do not exist there and no compiled MPS path has been measured faster", None, dev)
    if dev != "cpu":
        return AccelChoice(AUTO, "none", f"no accelerated backend for device {dev!r}", None, dev)
    if not _installed("onnxruntime"):
        return AccelChoice(AUTO, "none", "eager on the CPU: onnxruntime is not installed (pip install "
                           "\"streambridge[onnx]\" measured 1.8-3.4x faster here)", None, dev)
    if components.dtype != torch.float32:
        return AccelChoice(AUTO, "none", f"eager on the CPU: onnxruntime runs float32 and the model is loaded as "
                           f"{str(components.dtype).removeprefix('torch.')}", None, dev)
    bank = f" (U-Net graph carrying the temporal bank of {int(temporal)})" if temporal else ""
    flag = f" --temporal-frames {int(temporal)}" if temporal else ""
    if _engines_cached(components, "onnxruntime", shape, cache_dir, options, temporal):
        return AccelChoice(AUTO, "onnxruntime", f"exported ONNX graphs for this configuration are cached{bank} "
                           "(ONNX Runtime measured 1.8-3.4x faster than eager on the CPU)", None, dev)
    if allow_build:
        return AccelChoice(AUTO, "onnxruntime", f"allow_build is on: the ONNX graphs{bank} are exported now (seconds) "
                           "and cached (ONNX Runtime measured 1.8-3.4x faster than eager on the CPU)", None, dev)
    return AccelChoice(AUTO, "none", f"eager on the CPU: no exported ONNX graphs{bank} cached for this configuration "
                       f"and allow_build is off (`streambridge engines build --backend onnxruntime{flag}` makes them; "
                       "measured 1.8-3.4x faster)", None, dev)


def _temporal_frames(temporal: int, backend: str) -> int:
    """The bank size the engine backends build their U-Net graphs for (``temporal`` must be the
    built size there, not just "a bank": it is a graph shape)."""
    if backend not in ("onnxruntime", "tensorrt") or not temporal:
        return 0
    if isinstance(temporal, bool):
        raise ValueError(f"acceleration {backend!r} builds its U-Net graph for the temporal bank's size: pass "
                         "temporal=max_frames, not True")
    return int(temporal)


def machine_choice(device: str = "auto") -> AccelChoice:
    """What ``auto`` picks on this machine before any model is loaded (for ``streambridge doctor``).

    Decides from the device and the installed packages only; cached engines for a particular
    configuration (TensorRT on CUDA, ONNX graphs on the CPU) can still change it at start-up.
    """
    from stream_core.models import resolve_device

    dev, _dtype = resolve_device(device, "auto")
    if dev.type == "cuda":
        return AccelChoice(AUTO, "compile", "inductor + CUDA graphs (TensorRT instead when its engines for the "
                           "configuration are cached)", "inductor", "cuda")
    if dev.type == "mps":
        return AccelChoice(AUTO, "none", "eager on Apple GPUs (no faster backend measured there)", None, "mps")
    if _installed("onnxruntime"):
        return AccelChoice(AUTO, "onnxruntime", "ONNX Runtime when its graphs for the configuration are cached or "
                           "allow_build is on, else eager", None, "cpu")
    return AccelChoice(AUTO, "none", "eager on the CPU (onnxruntime is not installed)", None, "cpu")


def runner_for(components: Any, requested: str, *, width: int, height: int, steps: int, frame_buffer: int,
               cfg_type: str, cache_dir: Path | str, allow_build: bool | None, denoising_batch: bool = True,
               options: Any = None, temporal: int = 0) -> tuple[Any, AccelChoice]:
    """Resolve ``requested`` and build its runner: ``(runner or None for eager, choice)``.

    What ``streambridge run`` and ``streambridge render`` both call, so they pick and fail alike.
    ``allow_build`` None (unset) lets ``auto``'s inductor compile happen at this start-up and builds
    nothing else; True / False allow / forbid every build at start-up. ``temporal``: the temporal
    bank's built size (``temporal.max_frames``; 0: none), see :func:`choose_acceleration`.
    The choice is logged at INFO. Any failure is an :class:`~stream_core.accel.errors.AccelError`
    whose message starts with the backend (and says when ``auto`` chose it).
    """
    from stream_core.accel.engines import AccelOptions, StreamShape, build_runner, unet_batch
    from stream_core.accel.errors import AccelError

    batch = unet_batch(steps, frame_buffer, cfg_type)
    shape = StreamShape(width, height, batch, frame_buffer, steps, cfg_type)
    options = options or AccelOptions()
    try:
        choice = choose_acceleration(components, requested, shape=shape, cache_dir=cache_dir,
                                     allow_build=bool(allow_build), denoising_batch=denoising_batch, options=options,
                                     temporal=temporal)
    except ValueError as exc:
        raise AccelError(f"acceleration {requested!r}: {exc}") from exc
    log.info("%s", choice.summary())
    if allow_build is None:
        allow_build = choice.requested == AUTO and choice.backend == "compile"
    if choice.backend == "none":
        return None, choice
    try:
        runner = build_runner(components, choice.backend, batch=batch, width=width, height=height,
                              frame_buffer_size=frame_buffer, steps=steps, cfg_type=cfg_type, cache_dir=cache_dir,
                              allow_build=allow_build,
                              options=dataclasses.replace(options, compile_mode=choice.compile_mode),
                              temporal_frames=_temporal_frames(temporal, choice.backend))
    except Exception as exc:
        via = " (chosen by acceleration: auto)" if choice.requested == AUTO else ""
        raise AccelError(f"acceleration {choice.label!r}{via}: {exc}") from exc
    return runner, choice
