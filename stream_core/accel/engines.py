"""Choosing a backend, finding or building its engines, and making the runner.

``build_runner(components, acceleration, ...)`` is the one entry point the daemon uses;
``build_engines(...)`` is what ``streambridge engines build`` runs ahead of a show.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stream_core.accel.cache import (
    COMPONENTS,
    TEMPORAL_COMPONENTS,
    CachedEngine,
    EngineCache,
    EngineKey,
    ModelIdentity,
    identify,
)
from stream_core.accel.errors import BackendUnavailableError, EngineMissingError
from stream_core.accel.export import (
    GraphSpec,
    compare,
    control_graph_specs,
    export_onnx,
    exporter_tag,
    graph_specs,
    temporal_graph_specs,
    temporal_variants,
    text_shape,
    torch_reference,
)
from stream_core.runner import ModelRunner, TorchRunner

log = logging.getLogger(__name__)

ACCELERATIONS: tuple[str, ...] = ("none", "compile", "tensorrt", "onnxruntime")
ENGINE_BACKENDS: tuple[str, ...] = ("tensorrt", "onnxruntime")
BUILD_BACKENDS: tuple[str, ...] = ("compile", "tensorrt", "onnxruntime")
CFG_TYPES: tuple[str, ...] = ("none", "full", "self", "initialize")
RUNNER_COMPONENTS: tuple[str, ...] = ("unet", "vae_enc", "vae_dec")


def unet_batch(steps: int, frame_buffer: int, cfg_type: str) -> int:
    """The pipeline's static U-Net batch: n*f (none, self), (n+1)*f (initialize), 2n*f (full)."""
    if cfg_type not in CFG_TYPES:
        raise ValueError(f"cfg_type should be one of {', '.join(CFG_TYPES)} but is {cfg_type!r}")
    rows = steps * frame_buffer
    return {"none": rows, "self": rows, "initialize": rows + frame_buffer, "full": 2 * rows}[cfg_type]


@dataclass(frozen=True)
class StreamShape:
    """The shapes an engine set is built for. ``steps``/``cfg_type`` may be unknown (None)."""

    width: int
    height: int
    batch: int
    frame_buffer: int = 1
    steps: int | None = None
    cfg_type: str | None = None

    def __post_init__(self) -> None:
        for name in ("width", "height", "batch", "frame_buffer"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} should be a positive integer but is {v!r}")
        if self.width % 8 or self.height % 8:
            raise ValueError(f"width and height should be multiples of 8 but are {self.width}x{self.height}")
        if self.steps is not None and self.cfg_type is not None:
            expected = unet_batch(self.steps, self.frame_buffer, self.cfg_type)
            if expected != self.batch:
                raise ValueError(
                    f"batch {self.batch} does not match steps {self.steps}, frame buffer {self.frame_buffer} "
                    f"and cfg {self.cfg_type!r} (the pipeline's unet_batch is {expected})"
                )

    @classmethod
    def for_stream(cls, width: int, height: int, steps: int, frame_buffer: int, cfg_type: str) -> StreamShape:
        return cls(width, height, unet_batch(steps, frame_buffer, cfg_type), frame_buffer, steps, cfg_type)


@dataclass(frozen=True)
class AccelOptions:
    """Backend knobs; the defaults are what the benchmarks found best."""

    exporter: str = "dynamo"  # dynamo | torchscript
    ort_provider: str = "auto"  # auto | cpu | cuda
    ort_threads: int | None = None  # None: torch.get_num_threads()
    trt_workspace: int = 4 << 30
    trt_cuda_graph: bool = True
    trt_optimization_level: int | None = None
    compile_mode: str | None = None  # graphs | inductor | max-autotune | aot (None: graphs on CUDA, inductor on CPU)
    cuda_graphs: bool | None = None  # None: on for CUDA
    channels_last: bool = False  # compile backend: NHWC memory layout (off: measured slower on the CPU)
    attention: str = "sdpa"  # compile backend: sdpa (fused) | math (see bench/channels_last.py)
    fp8: bool = False  # compile backend: FP8 U-Net linears (Ada/Hopper GPUs only; an error elsewhere)
    verify: bool = True  # check each new graph/engine against torch before caching it
    # ONNX Runtime / TensorRT with ControlNets: "separate" (each ControlNet its own graph, the U-Net
    # taking residuals; a disabled ControlNet is not run) or "unet" (all inside one U-Net graph)
    controlnet_graph: str = "separate"


# ---------------------------------------------------------------------------- keys
@dataclass(frozen=True)
class EngineTarget:
    """Where engines run: backend, runtime version, device architecture, precision."""

    backend: str
    runtime: str
    device_tag: str
    precision: str
    provider: str = ""


def _precision(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def _target(backend: str, components: Any, options: AccelOptions) -> EngineTarget:
    device: torch.device = components.device
    if backend == "onnxruntime":
        from stream_core.accel.ort import ort_version, resolve_provider

        provider = resolve_provider(options.ort_provider, device)
        if provider == "cpu" and components.dtype != torch.float32:
            raise ValueError(
                f"onnxruntime on the CPU runs float32, but the model is loaded as {components.dtype}; "
                "load it with dtype float32"
            )
        if provider == "cuda":
            from stream_core.accel.tensorrt_backend import device_arch

            dev_tag = "cuda-" + device_arch(device)
        else:
            dev_tag = "cpu"
        return EngineTarget(backend, f"ort-{ort_version()}-{provider}", dev_tag, _precision(components.dtype), provider)
    if backend == "tensorrt":
        from stream_core.accel.tensorrt_backend import device_arch, import_tensorrt, require_cuda

        trt = import_tensorrt()
        require_cuda()
        if device.type != "cuda":
            raise BackendUnavailableError(
                f"acceleration 'tensorrt' needs the model on the GPU (device: cuda), but it is on {device}"
            )
        if components.dtype != torch.float16:
            raise ValueError(
                f"acceleration 'tensorrt' builds fp16 engines from the model as loaded, but it is loaded as "
                f"{components.dtype}; load it with dtype float16 (the default on CUDA)"
            )
        return EngineTarget(backend, f"trt-{trt.__version__}", device_arch(device), "fp16")
    raise ValueError(f"{backend!r} has no engines; engine backends: {', '.join(ENGINE_BACKENDS)}")


def engine_key(identity: ModelIdentity, target: EngineTarget, component: str, shape: StreamShape,
               text: tuple[int, int], exporter: str, controlnet: int | None = None,
               temporal_frames: int | None = None) -> EngineKey:
    """The cache key of one component: only the fields that change that component's graph.
    ``controlnet``: which of ``identity.controlnets`` a ``controlnet`` graph runs;
    ``temporal_frames``: the temporal bank's built size (``unet_tmp`` / ``unet_res_tmp``)."""
    common: dict[str, Any] = {
        "backend": target.backend, "component": component, "model": identity.model, "vae": identity.vae,
        "loras": identity.loras, "precision": target.precision, "runtime": target.runtime,
        "device": target.device_tag, "exporter": exporter_tag(exporter),
    }
    if component in TEMPORAL_COMPONENTS:
        if not temporal_frames or shape.steps is None or shape.cfg_type is None:
            raise ValueError(f"a {component} key needs the temporal bank's max_frames, the steps and the guidance mode")
        return EngineKey(**common, width=shape.width, height=shape.height, batch=shape.batch, steps=shape.steps,
                         frame_buffer=shape.frame_buffer, cfg_type=shape.cfg_type, text_len=text[0], text_dim=text[1],
                         temporal_frames=int(temporal_frames))
    if component in ("unet", "unet_res", "controlnet", "unet_cn"):
        cn = None
        if component == "unet_cn":
            if not identity.controlnets:
                raise ValueError("a unet_cn graph needs ControlNets")
            cn = "+".join(identity.controlnets)
        if component == "controlnet":
            if controlnet is None or not 0 <= controlnet < len(identity.controlnets):
                raise ValueError(f"controlnet {controlnet!r} is not one of the {len(identity.controlnets)} identified")
            cn = identity.controlnets[controlnet]
        return EngineKey(**common, width=shape.width, height=shape.height, batch=shape.batch, steps=shape.steps,
                         frame_buffer=shape.frame_buffer, cfg_type=shape.cfg_type, text_len=text[0], text_dim=text[1],
                         controlnet=cn)
    if component in ("vae_enc", "vae_dec"):
        return EngineKey(**common, width=shape.width, height=shape.height, batch=shape.frame_buffer,
                         frame_buffer=shape.frame_buffer)
    if component == "text":
        return EngineKey(**common, batch=1, text_len=text[0], text_dim=text[1])
    raise ValueError(f"unknown component {component!r}")


def _describe(key: EngineKey) -> str:
    parts = [key.component]
    if key.width:
        parts.append(f"{key.width}x{key.height}")
    if key.component in ("unet", "unet_res", "controlnet", "unet_cn", *TEMPORAL_COMPONENTS):
        parts.append(f"batch {key.batch} (steps {key.steps}, frame buffer {key.frame_buffer}, cfg {key.cfg_type})")
    elif key.component != "text":
        parts.append(f"frame buffer {key.frame_buffer}")
    if key.temporal_frames:
        parts.append(f"temporal bank of {key.temporal_frames} frame(s)")
    parts.append(key.precision)
    return ", ".join(parts)


def build_command(components: Any, backend: str, shape: StreamShape, cache_dir: Path,
                  temporal_frames: int | None = None) -> str:
    """The ``streambridge engines build`` line that makes the engines for this configuration
    (``temporal_frames``: the U-Net graph carries a temporal bank of that many frames)."""
    info = getattr(components, "info", {}) or {}
    cmd = ["streambridge engines build", f"--backend {backend}"]
    model = info.get("model")
    if model:
        cmd.append(f"--model {model}")
        vae = info.get("vae")
        if vae == f"{model}/vae" and info.get("vae_class") == "AutoencoderKL":
            cmd.append("--vae full")
        elif vae and vae not in ("madebyollin/taesd", f"{model}/vae"):
            cmd.append(f"--vae {vae}")
        cmd.append(f"--lcm-lora {info.get('lcm_lora') or 'none'}")
        for src, scale in info.get("loras") or ():
            cmd.append(f"--lora {src}:{scale:g}")
    for cn_model, _pre in info.get("controlnets") or ():
        cmd.append(f"--controlnet {cn_model}")
    device_type = getattr(components, "device", torch.device("cpu")).type
    if backend == "onnxruntime" and device_type == "cuda":
        cmd.append("--device cuda")
    if backend == "compile":
        cmd.append(f"--device {device_type}")
    cmd.append(f"--size {shape.width}x{shape.height}")
    if shape.steps is not None:
        cmd.append(f"--steps {shape.steps}")
    cmd.append(f"--frame-buffer {shape.frame_buffer}")
    if shape.cfg_type is not None:
        cmd.append(f"--cfg {shape.cfg_type}")
    if temporal_frames:
        cmd.append(f"--temporal-frames {temporal_frames}")
    cmd.append(f"--cache {cache_dir}")
    return " ".join(cmd)


# ---------------------------------------------------------------------------- building one graph
def _tolerances(precision: str) -> tuple[float, float]:
    return (2e-3, 1e-4) if precision == "fp32" else (5e-2, 1e-2)


def _build_ort(cache: EngineCache, key: EngineKey, components: Any, spec: GraphSpec, target: EngineTarget,
               options: AccelOptions) -> CachedEngine:
    from stream_core.accel.ort import OrtGraph

    scratch = cache.scratch()
    try:
        path = scratch / f"{key.stem}.onnx"
        files = export_onnx(components, spec, path, exporter=options.exporter)
        if options.verify:
            graph = OrtGraph(path, provider=target.provider, device=components.device,
                             threads=options.ort_threads or torch.get_num_threads())
            _verify(graph, components, spec, key)
            del graph
        return cache.store(key, {p.name: p for p in files}, main=path.name, extra=_sources(components))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build_trt(cache: EngineCache, key: EngineKey, components: Any, spec: GraphSpec, options: AccelOptions) -> CachedEngine:
    from stream_core.accel.tensorrt_backend import TrtGraph, build_engine

    scratch = cache.scratch()
    t0 = time.perf_counter()
    try:
        onnx_path = scratch / "graph.onnx"
        export_onnx(components, spec, onnx_path, exporter=options.exporter, dtype=torch.float16)
        plan = build_engine(onnx_path, label=f"TensorRT {key.component}", workspace=options.trt_workspace,
                            optimization_level=options.trt_optimization_level)
        for p in list(scratch.iterdir()):
            p.unlink()
        plan_path = scratch / f"{key.stem}.plan"
        plan_path.write_bytes(plan)
        if options.verify:
            graph = TrtGraph(plan, name=key.component, use_cuda_graph=False)
            _verify(graph, components, spec, key)
            del graph
        return cache.store(key, {plan_path.name: plan_path}, main=plan_path.name,
                           extra={**_sources(components), "build_seconds": round(time.perf_counter() - t0, 1)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _sources(components: Any) -> dict[str, Any]:
    """Human-readable origin of the weights, for ``engines list`` (the key holds their hashes)."""
    info = getattr(components, "info", {}) or {}
    return {"model_source": info.get("model"), "vae_source": info.get("vae"),
            "loras": [list(x) for x in info.get("loras") or ()], "lcm_lora": info.get("lcm_lora")}


def _verify(graph: Any, components: Any, spec: GraphSpec, key: EngineKey) -> float:
    """Run ``graph`` on fixed example inputs and compare every output with the torch module's; a
    temporal graph under each setting it must reproduce (cache read with injection, cache off,
    every slot read)."""
    rtol, atol = _tolerances(key.precision)
    err = 0.0
    base = spec.example_inputs(components.device, components.dtype, seed=1)
    for label, inputs in temporal_variants(spec, base):
        feeds = dict(zip(spec.input_names, inputs, strict=True))
        outs = graph.run(feeds)
        ref = torch_reference(components, spec, inputs)
        refs = list(ref) if isinstance(ref, (list, tuple)) else [ref]
        where = f" ({label})" if label else ""
        for name, r in zip(spec.output_names, refs, strict=True):  # every output (a ControlNet has several)
            err = max(err, compare(outs[name], r, rtol=rtol, atol=atol,
                                   what=f"{key.backend} {key.component} {name}{where}"))
    log.info("verified %s %s against torch: max abs error %.2g", key.backend, key.component, err)
    return err


def ensure_engine(cache: EngineCache, key: EngineKey, components: Any, spec: GraphSpec, target: EngineTarget, *,
                  allow_build: bool, options: AccelOptions, shape: StreamShape, force: bool = False,
                  temporal_frames: int | None = None) -> tuple[CachedEngine, bool]:
    """The verified cache entry for ``key``, built when missing and allowed. Returns (entry, built).
    ``temporal_frames``: the configuration's temporal bank size, for the build command a missing
    engine names (default: the key's)."""
    if not force:
        found = cache.lookup(key)
        if found.entry is not None:
            return found.entry, False
        problem = found.problem
    else:
        problem = None
    if not allow_build:
        why = f" The cached one failed its check and was quarantined: {problem}." if problem else ""
        fused_flag = " --controlnet-graph unet" if key.component == "unet_cn" else ""
        raise EngineMissingError(
            f"no {key.backend} engine for {_describe(key)} in {cache.root}.{why} Build it ahead of the show "
            f"with: {build_command(components, key.backend, shape, cache.root, temporal_frames or key.temporal_frames)}{fused_flag} "
            "(or allow building at "
            "start-up in the config)"
        )
    log.info("building %s %s (%s)", key.backend, key.component, _describe(key))
    if key.backend == "onnxruntime":
        return _build_ort(cache, key, components, spec, target, options), True
    return _build_trt(cache, key, components, spec, options), True


def _graph(entry: CachedEngine, target: EngineTarget, components: Any, options: AccelOptions) -> Any:
    if target.backend == "onnxruntime":
        from stream_core.accel.ort import OrtGraph

        return OrtGraph(entry.main, provider=target.provider, device=components.device,
                        threads=options.ort_threads or torch.get_num_threads())
    from stream_core.accel.tensorrt_backend import TrtGraph

    return TrtGraph(entry.main.read_bytes(), name=entry.key.component, use_cuda_graph=options.trt_cuda_graph)


# ---------------------------------------------------------------------------- public entry points
def build_engines(
    components: Any,
    backend: str,
    shape: StreamShape,
    cache_dir: Path | str,
    *,
    which: Sequence[str] = COMPONENTS,
    force: bool = False,
    options: AccelOptions | None = None,
    temporal_frames: int = 0,
) -> list[Any]:
    """Make sure every component in ``which`` has a verified engine (build what is missing).

    Engine backends return ``(CachedEngine, built)`` per component; ``compile`` compiles the
    runner into its persisted inductor cache and returns its ``CompiledArtefacts`` (nothing for
    ``graphs`` mode, which keeps nothing on disk). ``temporal_frames`` > 0: the U-Net graphs carry a
    temporal bank of that built size (``unet_tmp``, and ``unet_res_tmp`` with ControlNets) in place
    of the plain ones; ``compile`` attaches the bank at start-up instead and ignores it here.
    """
    options = options or AccelOptions()
    if backend == "compile":
        runner = _compiled_runner(components, shape, options, warm_up=True, cache_dir=Path(cache_dir),
                                  allow_build=True)
        return [runner.artefacts] if getattr(runner, "artefacts", None) is not None else []
    cache = EngineCache(cache_dir)
    target = _target(backend, components, options)
    identity = identify(components, cache.memo())
    specs = _runner_specs(components, shape, options, temporal_frames)
    text = text_shape(components)
    done: list[tuple[CachedEngine, bool]] = []
    for comp in which:
        spec = specs.get(comp) or graph_specs(components, batch=shape.batch, frame_buffer=shape.frame_buffer,
                                              width=shape.width, height=shape.height)[comp]
        key = _spec_key(identity, target, spec, shape, text, options.exporter)
        done.append(ensure_engine(cache, key, components, spec, target, allow_build=True, options=options,
                                  shape=shape, force=force))
    if "unet" in which:  # the ControlNets' graphs go with the U-Net's
        for name, spec in specs.items():
            if name not in RUNNER_COMPONENTS:
                key = _spec_key(identity, target, spec, shape, text, options.exporter)
                done.append(ensure_engine(cache, key, components, spec, target, allow_build=True, options=options,
                                          shape=shape, force=force))
    return done


def _spec_key(identity: ModelIdentity, target: EngineTarget, spec: GraphSpec, shape: StreamShape,
              text: tuple[int, int], exporter: str) -> EngineKey:
    return engine_key(identity, target, spec.component, shape, text, exporter,
                      controlnet=spec.index if spec.component == "controlnet" else None,
                      temporal_frames=spec.temporal.max_frames if spec.temporal is not None else None)


def _runner_specs(components: Any, shape: StreamShape, options: AccelOptions,
                  temporal_frames: int = 0) -> dict[str, GraphSpec]:
    """The graphs a :class:`GraphRunner` runs, by its name for them: ``unet``, ``vae_enc``,
    ``vae_dec``, then ``controlnet0`` ... and ``unet_res`` (or ``unet_cn``). With a temporal bank
    (``temporal_frames`` > 0) the ``unet`` and ``unet_res`` entries are the graphs carrying it
    (components ``unet_tmp`` / ``unet_res_tmp``)."""
    specs: dict[str, GraphSpec] = dict(graph_specs(components, batch=shape.batch, frame_buffer=shape.frame_buffer,
                                                   width=shape.width, height=shape.height))
    del specs["text"]
    fused = _fused(options)
    if temporal_frames:
        if fused and getattr(components, "controlnets", None):
            raise ValueError("a temporal bank cannot ride in the single ControlNet + U-Net graph "
                             "(controlnet_graph: unet): use controlnet_graph: separate (the default, each "
                             "ControlNet its own graph and the U-Net taking residuals) or temporal.max_frames 0")
        if shape.steps is None:
            raise ValueError("a temporal U-Net graph needs the stream's steps (its bank keeps a ring per stream row)")
        tmp = temporal_graph_specs(components, batch=shape.batch, rows=shape.steps * shape.frame_buffer,
                                   width=shape.width, height=shape.height, max_frames=temporal_frames)
        specs["unet"] = tmp["unet_tmp"]
    specs.update(control_graph_specs(components, batch=shape.batch, width=shape.width, height=shape.height,
                                     fused=fused))
    if temporal_frames and "unet_res" in specs:
        specs["unet_res"] = tmp["unet_res_tmp"]
    return specs


def _fused(options: AccelOptions) -> bool:
    if options.controlnet_graph not in ("separate", "unet"):
        raise ValueError(f"controlnet_graph should be separate or unet but is {options.controlnet_graph!r}")
    return options.controlnet_graph == "unet"


def control_keys(identity: ModelIdentity, target: EngineTarget, shape: StreamShape, text: tuple[int, int],
                 exporter: str, fused: bool = False) -> list[EngineKey]:
    """The keys of the ControlNet graphs a runner needs (one per ControlNet, then ``unet_res``;
    with ``fused`` the one ``unet_cn``)."""
    if not identity.controlnets:
        return []
    if fused:
        return [engine_key(identity, target, "unet_cn", shape, text, exporter)]
    keys = [engine_key(identity, target, "controlnet", shape, text, exporter, controlnet=k)
            for k in range(len(identity.controlnets))]
    return [*keys, engine_key(identity, target, "unet_res", shape, text, exporter)]


def build_runner(
    components: Any,
    acceleration: str,
    *,
    batch: int,
    width: int,
    height: int,
    cache_dir: Path | str,
    allow_build: bool,
    frame_buffer_size: int = 1,
    steps: int | None = None,
    cfg_type: str | None = None,
    options: AccelOptions | None = None,
    warm_up: bool = True,
    temporal_frames: int = 0,
) -> ModelRunner:
    """The :class:`ModelRunner` for ``acceleration`` (none | compile | tensorrt | onnxruntime).

    ``batch`` is the pipeline's ``unet_batch``; encode/decode run ``frame_buffer_size`` frames.
    ``steps`` and ``cfg_type`` complete the U-Net engine key (pass them: two configurations with
    the same batch but different guidance modes then get separate, correctly labelled engines).
    A backend that cannot run here raises :class:`BackendUnavailableError`; a missing engine with
    ``allow_build=False`` raises :class:`EngineMissingError` naming the build command. Nothing
    falls back silently to another backend. ``temporal_frames`` > 0 (the pipeline will install a
    temporal bank of that built size): the engine backends run U-Net graphs that carry the bank as
    inputs and outputs (``GraphRunner.attach_temporal_bank``); ``compile`` attaches it at
    start-up by itself and ``none`` needs nothing, so both ignore it.
    """
    if acceleration not in ACCELERATIONS:
        raise ValueError(f"acceleration should be one of {', '.join(ACCELERATIONS)} but is {acceleration!r}")
    options = options or AccelOptions()
    shape = StreamShape(width, height, batch, frame_buffer_size, steps, cfg_type)
    units = list(getattr(components, "controlnets", ()) or ())
    if acceleration == "none":
        return TorchRunner(components.unet, components.vae, [u.model for u in units])
    if acceleration == "compile":
        return _compiled_runner(components, shape, options, warm_up, cache_dir=Path(cache_dir), allow_build=allow_build)

    cache = EngineCache(cache_dir)
    target = _target(acceleration, components, options)
    identity = identify(components, cache.memo())
    specs = _runner_specs(components, shape, options, temporal_frames)
    text = text_shape(components)
    graphs: dict[str, Any] = {}
    built: list[str] = []
    # unet, vae_enc, vae_dec, then controlnet0, controlnet1, ..., unet_res (or unet_cn)
    for comp, spec in specs.items():
        key = _spec_key(identity, target, spec, shape, text, options.exporter)
        entry, was_built = ensure_engine(cache, key, components, spec, target, allow_build=allow_build,
                                         options=options, shape=shape, temporal_frames=temporal_frames)
        if was_built:
            built.append(spec.component if comp in ("unet", "unet_res") else comp)
        graphs[comp] = _graph(entry, target, components, options)
        log.info("%s %s: %s", acceleration, spec.component if comp in ("unet", "unet_res") else comp,
                 entry.main.name)
    from stream_core.accel.graph_runner import GraphRunner, TemporalGraphs

    temporal = None
    if temporal_frames:
        from stream_core.temporal import skeleton_unet

        lay = specs["unet"].temporal
        assert lay is not None
        temporal = TemporalGraphs(max_frames=lay.max_frames, rows=lay.rows, uncond=lay.uncond, layers=lay.layers,
                                  layout_unet=skeleton_unet(components.unet))
    dtype = torch.float32 if target.precision == "fp32" else torch.float16
    runner = GraphRunner(graphs["unet"], graphs["vae_enc"], graphs["vae_dec"], device=components.device, dtype=dtype,
                         backend=acceleration, info={"built": built, "runtime": target.runtime},
                         controlnets=[graphs[f"controlnet{k}"] for k in range(len(units)) if f"controlnet{k}" in graphs],
                         unet_res=graphs.get("unet_res"), unet_cn=graphs.get("unet_cn"), controlnet_count=len(units),
                         temporal=temporal)
    if warm_up:
        _warm(runner, components, shape, dtype)
    return runner


def build_text_encoder(components: Any, acceleration: str, *, cache_dir: Path | str, allow_build: bool,
                       options: AccelOptions | None = None) -> Any:
    """A text encoder for :class:`stream_core.prompts.PromptEncoder` on the chosen backend.

    ``none``/``compile`` return the torch module (prompt encoding is off the render path);
    ``onnxruntime``/``tensorrt`` return a :class:`GraphTextEncoder` over the cached ``text`` graph.
    """
    if acceleration not in ACCELERATIONS:
        raise ValueError(f"acceleration should be one of {', '.join(ACCELERATIONS)} but is {acceleration!r}")
    if acceleration in ("none", "compile"):
        return components.text_encoder
    options = options or AccelOptions()
    cache = EngineCache(cache_dir)
    target = _target(acceleration, components, options)
    identity = identify(components, cache.memo())
    shape = StreamShape(8, 8, 1)  # the text graph depends on no image shape
    spec = graph_specs(components, batch=1, frame_buffer=1, width=8, height=8)["text"]
    text = text_shape(components)
    key = engine_key(identity, target, "text", shape, text, options.exporter)
    entry, _ = ensure_engine(cache, key, components, spec, target, allow_build=allow_build, options=options, shape=shape)
    from stream_core.accel.graph_runner import GraphTextEncoder

    dtype = torch.float32 if target.precision == "fp32" else torch.float16
    return GraphTextEncoder(_graph(entry, target, components, options), device=components.device, dtype=dtype,
                            hidden_size=int(components.text_encoder.config.hidden_size))


def _examples(components: Any, shape: StreamShape, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator("cpu").manual_seed(0)
    dev = components.device
    length, dim = text_shape(components)
    c = int(components.unet.config.in_channels)
    h, w = shape.height // 8, shape.width // 8
    latents = torch.randn((shape.batch, c, h, w), generator=g).to(dev, dtype)
    timesteps = torch.linspace(999, 99, shape.batch).round().long().to(dev)
    text = torch.randn((shape.batch, length, dim), generator=g).to(dev, dtype)
    images = (torch.rand((shape.frame_buffer, 3, shape.height, shape.width), generator=g) * 2 - 1).to(dev, dtype)
    return latents, timesteps, text, images


def _warm(runner: Any, components: Any, shape: StreamShape, dtype: torch.dtype) -> None:
    latents, timesteps, text, images = _examples(components, shape, dtype)
    with torch.inference_mode():
        runner.unet(latents, timesteps, text)
        runner.decode(runner.encode(images))
    if components.device.type == "cuda":
        torch.cuda.synchronize(components.device)


def _compiled_runner(components: Any, shape: StreamShape, options: AccelOptions, warm_up: bool, *,
                     cache_dir: Path, allow_build: bool) -> ModelRunner:
    """A CompiledRunner; with inductor its artefacts persist per key under ``<cache>/inductor/``.

    A missing artefact (no ready marker for this exact key) with ``allow_build=False`` raises
    :class:`EngineMissingError` naming ``streambridge engines build``: nothing compiles at a show
    unless the config allows it.
    """
    from stream_core.accel.compile_cache import CompiledArtefacts, compile_key, inductor_cache
    from stream_core.accel.compiled import COMPILE_MODES, CompiledRunner

    unet = components.unet
    if options.fp8:
        import copy

        from stream_core.accel.fp8 import quantize_linears, require_fp8

        require_fp8(components.device)
        unet = copy.deepcopy(unet)  # the loaded model stays as it is (prompt encoding, references)
        log.info("fp8: %d U-Net linear layers run in float8 e4m3", quantize_linears(unet))
    runner = CompiledRunner(unet, components.vae, compile_mode=options.compile_mode,
                            cuda_graphs=options.cuda_graphs, channels_last=options.channels_last,
                            attention=options.attention,
                            controlnets=[u.model for u in getattr(components, "controlnets", ()) or ()])
    runner.artefacts = None
    if COMPILE_MODES[runner.compile_mode] is None:  # CUDA graphs only: capture takes seconds, nothing on disk
        if warm_up:
            latents, timesteps, text, images = _examples(components, shape, components.dtype)
            runner.warm_up(latents, timesteps, text, images)
        return runner
    cache = EngineCache(cache_dir)
    key = compile_key(identify(components, cache.memo()), shape, dtype=components.dtype, device=components.device,
                      compile_mode=runner.compile_mode, cuda_graphs=runner.cuda_graphs,
                      channels_last=runner.channels_last, attention=runner.attention, fp8=options.fp8)
    artefacts = CompiledArtefacts(cache.root, key)
    runner.artefacts = artefacts
    ready = artefacts.ready()
    if runner.compile_mode == "aot":  # the marker and every package the runner loads
        ready = ready and all((artefacts.folder / f"{call.name}.pt2").is_file() for call in runner._aot)
    runner.info.update(cache=str(artefacts.folder), cached=ready)
    if not ready and not allow_build:
        raise EngineMissingError(
            f"no compiled artefacts ({runner.compile_mode}) for this configuration in {artefacts.folder.parent} "
            f"(key {key.stem}); compiling takes about a minute, so it is not done at start-up unless allowed. "
            f"Build them ahead of the show with: {build_command(components, 'compile', shape, cache.root)} "
            "(or set pipeline.allow_build: true to compile at start-up)"
        )
    if not warm_up:
        return runner
    artefacts.prepare()
    runner.set_package_folder(artefacts.folder)  # compile_mode aot: its packages live with the key
    log.info("%s compiled artefacts for %s in %s", "using cached" if ready else "compiling (first start for this key)",
             _describe_shape(shape), artefacts.folder)
    latents, timesteps, text, images = _examples(components, shape, components.dtype)
    with inductor_cache(artefacts.folder):
        seconds = runner.warm_up(latents, timesteps, text, images)
    artefacts.mark_ready(seconds)
    return runner


def _describe_shape(shape: StreamShape) -> str:
    extra = f", steps {shape.steps}, cfg {shape.cfg_type}" if shape.steps is not None else ""
    return f"{shape.width}x{shape.height}, U-Net batch {shape.batch}, frame buffer {shape.frame_buffer}{extra}"
