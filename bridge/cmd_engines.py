"""``streambridge engines build | list | verify``: the engine cache, ahead of the show.

* ``build`` compiles (``compile``: inductor, into its persisted cache), exports (ONNX Runtime) or
  builds (TensorRT) every graph for each stream shape the config and its presets reach, and
  verifies each engine against torch before it enters the cache. Exit 0 when all are ready.
* ``list`` shows what is cached, with the key fields that matter. Exit 0.
* ``verify`` hash-checks every cached file; bad ones are moved to ``quarantine/``. Exit 0 when all
  are good (or the cache is empty), 1 when anything was quarantined.

The cache folder is ``--cache``, else ``$STREAMBRIDGE_CACHE``, else ``~/.cache/streambridge``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.cli import CliError

log = logging.getLogger("streambridge.engines")

CFG_CHOICES = ("none", "full", "self", "initialize")
COMPONENT_CHOICES = ("unet", "vae_enc", "vae_dec", "text")
BACKEND_CHOICES = ("auto", "compile", "tensorrt", "onnxruntime")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "engines",
        help="build, list and verify cached TensorRT engines / ONNX graphs",
        description="Manage the engine cache (docs/acceleration.md). Cache folder: --cache, else "
        "$STREAMBRIDGE_CACHE, else ~/.cache/streambridge.",
    )
    actions = parser.add_subparsers(dest="engines_action", metavar="ACTION")

    build = actions.add_parser(
        "build",
        help="compile (inductor), build (TensorRT) or export+verify (onnxruntime) ahead of the show",
        description="Build everything the daemon needs for every stream shape the config and the presets "
        "can reach (size, steps, frame buffer, guidance mode), ahead of the show: a start-up then finds it "
        "cached. The shapes are static. Exit 0 when all are ready.",
    )
    build.add_argument("--config", default=None, help="daemon config: its model, pipeline shape, acceleration and "
                       "presets folder are the defaults of the flags below")
    build.add_argument("--presets", default=None, metavar="DIR",
                       help="presets folder whose cold fields add shapes (default: the config's, if --config)")
    build.add_argument("--model", default=None, help="diffusers folder or hub id (default: stabilityai/sd-turbo)")
    build.add_argument("--vae", default=None, help="taesd (default), full, or a VAE folder / hub id")
    build.add_argument("--lcm-lora", default=None, help="auto (default), none, or a LoRA folder / hub id")
    build.add_argument("--lora", action="append", default=[], metavar="SRC[:SCALE]",
                       help="a LoRA to fuse (repeatable), optionally with its scale")
    build.add_argument("--controlnet", action="append", default=[], metavar="FOLDER",
                       help="a ControlNet the stream runs (repeatable, in config order): its graph and the U-Net "
                       "graph taking residuals are built too (default: the config's controlnets)")
    build.add_argument("--controlnet-graph", choices=("separate", "unet"), default="separate",
                       help="separate (default): each ControlNet its own graph, the U-Net taking residuals; unet: "
                       "every ControlNet inside one U-Net graph")
    build.add_argument("--size", default=None, help="WIDTHxHEIGHT, multiples of 8 (default 512x512)")
    build.add_argument("--steps", type=int, default=None, help="denoising steps = len(t_index_list) (default 2)")
    build.add_argument("--frame-buffer", type=int, default=None, help="frames per call (default 1)")
    build.add_argument("--cfg", choices=CFG_CHOICES, default=None, help="guidance mode (default self)")
    build.add_argument("--temporal-frames", type=int, default=None, metavar="N",
                       help="the temporal bank's built size (temporal.max_frames, 0..4; default: the config's, else "
                       "0): the engine backends' U-Net graphs carry a bank of N frames (a graph shape: another N "
                       "needs other graphs); compile attaches the bank at start-up and ignores it")
    build.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                       help="auto (default): what acceleration auto runs here -- compile (inductor + CUDA graphs) "
                       "on CUDA, onnxruntime on the CPU; or the config's explicit acceleration")
    build.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where to load the model (default: cuda for tensorrt and for compile when a GPU is "
                       "visible, else cpu)")
    build.add_argument("--only", action="append", choices=COMPONENT_CHOICES, default=None,
                       help="build only this component (repeatable; default all four; engine backends only)")
    build.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                       help="ONNX exporter (default dynamo)")
    build.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace (default 4)")
    build.add_argument("--force", action="store_true", help="rebuild even when a verified engine exists")
    build.add_argument("--cache", type=Path, default=None, help="cache folder")
    build.set_defaults(func=_build)

    lst = actions.add_parser("list", help="list cached engines with their key fields",
                             description="List every cached engine/graph with its key fields. Exit 0.")
    lst.add_argument("--cache", type=Path, default=None, help="cache folder")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    lst.set_defaults(func=_list)

    ver = actions.add_parser(
        "verify", help="hash-check every cached engine; quarantine bad ones (exit 1 if any)",
        description="Check every cached file against the SHA-256 and size in its sidecar and the "
        "sidecar against its key. Bad entries move to <backend>/quarantine/. Exit 0 all good, 1 "
        "when anything was quarantined.",
    )
    ver.add_argument("--cache", type=Path, default=None, help="cache folder")
    ver.set_defaults(func=_verify)

    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _cache_dir(args: argparse.Namespace) -> Path:
    from stream_core.accel.cache import default_cache_dir

    return Path(args.cache).expanduser() if args.cache else default_cache_dir()


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not m:
        raise CliError(f"--size should look like 512x512, got {text!r}")
    w, h = int(m.group(1)), int(m.group(2))
    if w < 8 or h < 8 or w % 8 or h % 8:
        raise CliError(f"--size {w}x{h}: width and height should be multiples of 8 (and at least 8)")
    return w, h


def _parse_lora(text: str) -> tuple[str, float]:
    src, sep, scale = text.rpartition(":")
    if sep and src and not re.fullmatch(r"[A-Za-z]", src):  # "C:\path" is a drive, not a scale
        try:
            return src, float(scale)
        except ValueError:
            pass
    return text, 1.0


@dataclass(frozen=True)
class BuildShape:
    """One static stream shape to build for."""

    width: int
    height: int
    steps: int
    frame_buffer: int
    cfg: str

    def label(self) -> str:
        return f"{self.width}x{self.height}, steps {self.steps}, frame buffer {self.frame_buffer}, cfg {self.cfg}"


def enumerate_shapes(base: BuildShape, presets: list[tuple[str, Any]]) -> list[tuple[BuildShape, list[str]]]:
    """Every distinct shape the base configuration and the presets' cold fields reach, in order of
    first appearance, each with what reaches it (``config`` and preset names).

    A preset's ``size``/``steps``/``frame_buffer``/``cfg`` replace the base's; a preset that sets
    none of them runs at the base shape.
    """
    shapes: dict[BuildShape, list[str]] = {base: ["config"]}
    for name, preset in presets:
        wh = preset.size_wh()
        shape = BuildShape(
            width=wh[0] if wh else base.width, height=wh[1] if wh else base.height,
            steps=preset.steps if preset.steps is not None else base.steps,
            frame_buffer=preset.frame_buffer if preset.frame_buffer is not None else base.frame_buffer,
            cfg=preset.cfg if preset.cfg is not None else base.cfg,
        )
        shapes.setdefault(shape, []).append(f"preset {name}")
    return list(shapes.items())


def _load_build_config(args: argparse.Namespace) -> Any:
    if not args.config:
        return None
    from bridge.config import load_config
    from bridge.yamlio import ConfigError

    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise CliError(f"invalid configuration:\n{exc}") from None


def _load_presets(folder: str | None) -> list[tuple[str, Any]]:
    if not folder:
        return []
    from bridge.presets import PresetStore
    from bridge.yamlio import ConfigError

    try:
        store = PresetStore(folder)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    for name, problem in store.errors().items():
        log.warning("preset %s left out: %s", name, problem)
    return store.items()


def _resolve_backend(requested: str, device: str) -> tuple[str, str]:
    """(backend, device) for ``--backend``/the config's acceleration and ``--device``."""
    import torch

    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if requested == "auto":
        requested = "compile" if cuda else "onnxruntime"
    if requested == "none":
        raise CliError("acceleration none runs eagerly: there is nothing to build")
    if device == "auto":
        device = "cuda" if requested == "tensorrt" or (requested == "compile" and cuda) else "cpu"
    return requested, device


def _build(args: argparse.Namespace) -> int:
    from stream_core.accel.engines import AccelOptions, StreamShape, build_engines
    from stream_core.accel.errors import AccelError
    from stream_core.models import (
        DEFAULT_MODEL,
        LoraSpec,
        ModelLoadError,
        ModelNotFoundError,
        ModelSpec,
        load_components,
    )

    cfg = _load_build_config(args)
    pc, mc = (cfg.pipeline, cfg.model) if cfg is not None else (None, None)
    if args.size is not None:
        width, height = parse_size(args.size)
    else:
        width, height = tuple(pc.size) if pc is not None else (512, 512)
    steps = args.steps if args.steps is not None else (len(pc.steps) if pc is not None else 2)
    frame_buffer = args.frame_buffer if args.frame_buffer is not None else (pc.frame_buffer if pc is not None else 1)
    cfg_type = args.cfg or (pc.cfg if pc is not None else "self")
    if steps < 1 or steps > 50:
        raise CliError(f"--steps should be within 1..50, got {steps}")
    if frame_buffer < 1:
        raise CliError(f"--frame-buffer should be >= 1, got {frame_buffer}")
    if args.workspace_gb <= 0:
        raise CliError(f"--workspace-gb should be positive, got {args.workspace_gb}")
    temporal_frames = args.temporal_frames if args.temporal_frames is not None else (
        cfg.temporal.max_frames if cfg is not None else 0)
    from stream_core.temporal import check_max_frames

    try:
        check_max_frames(temporal_frames)
    except ValueError as exc:
        raise CliError(f"--temporal-frames: {exc}") from None
    requested = args.backend or (pc.acceleration if pc is not None else "auto")
    device = args.device if args.device != "auto" or mc is None or mc.device == "auto" else (
        "cuda" if mc.device.startswith("cuda") else "cpu")
    backend, device = _resolve_backend(requested, device)
    if backend == "compile":
        temporal_frames = 0  # the compiled runner captures / compiles with the bank at start-up
    dtype = "float32" if device == "cpu" else "float16"
    if backend == "compile" and mc is not None and mc.dtype != "auto":
        dtype = mc.dtype
    _check_backend(backend, device)  # before the (slow) model load
    presets_dir = args.presets or (cfg.presets.folder if cfg is not None else None)
    shapes = enumerate_shapes(BuildShape(width, height, steps, frame_buffer, cfg_type), _load_presets(presets_dir))
    cache = _cache_dir(args)
    bank = f", temporal bank of {temporal_frames} frame(s)" if temporal_frames else ""
    sys.stdout.write(f"{len(shapes)} shape(s) to build for {backend} on {device}{bank}:\n")
    for shape, sources in shapes:
        sys.stdout.write(f"  {shape.label()}  <- {', '.join(sources)}\n")
    loras = tuple(LoraSpec(*_parse_lora(s)) for s in args.lora)
    if not loras and mc is not None:
        loras = tuple(LoraSpec(lo.source, lo.scale) for lo in mc.loras)
    spec = ModelSpec(model=args.model or (mc.model if mc is not None else DEFAULT_MODEL),
                     vae=args.vae or (mc.vae if mc is not None else "taesd"),
                     lcm_lora=args.lcm_lora or (mc.lcm_lora if mc is not None else "auto"),
                     loras=loras, device=device, dtype=dtype)
    from stream_core.controlnet import ControlNetSpec

    # the graphs depend on the ControlNets' weights only (a depth preprocessor runs eagerly)
    cn_models = list(args.controlnet) or [c.model for c in getattr(cfg, "controlnets", None) or ()]
    if temporal_frames and cn_models and args.controlnet_graph == "unet":
        raise CliError("--controlnet-graph unet cannot carry the temporal bank (--temporal-frames / "
                       "temporal.max_frames): use --controlnet-graph separate (the default)")
    try:
        components = load_components(spec, controlnets=[ControlNetSpec(m) for m in cn_models])
    except (ModelNotFoundError, ModelLoadError, ValueError) as exc:
        raise CliError(str(exc), code=1) from None
    options = AccelOptions(exporter=args.exporter, controlnet_graph=args.controlnet_graph, trt_workspace=int(args.workspace_gb * (1 << 30)),
                           compile_mode="inductor" if requested == "auto" and backend == "compile" else None)
    t0 = time.perf_counter()
    count = 0
    for shape_spec, _sources in shapes:
        try:
            shape = StreamShape.for_stream(shape_spec.width, shape_spec.height, shape_spec.steps,
                                           shape_spec.frame_buffer, shape_spec.cfg)
        except ValueError as exc:
            raise CliError(f"{shape_spec.label()}: {exc}") from None
        log.info("building %s for %s (U-Net batch %d) in %s", backend, shape_spec.label(), shape.batch, cache)
        t1 = time.perf_counter()
        try:
            done = build_engines(components, backend, shape, cache, which=tuple(args.only or COMPONENT_CHOICES),
                                 force=args.force, options=options, temporal_frames=temporal_frames)
        except (AccelError, ValueError) as exc:
            raise CliError(str(exc), code=1) from None
        if backend == "compile":
            for art in done:
                sys.stdout.write(f"compiled  {shape_spec.label()}  {art.folder.name}  "
                                 f"({time.perf_counter() - t1:.0f} s)\n")
                count += 1
            if not done:
                sys.stdout.write(f"graphs    {shape_spec.label()}  (CUDA graphs only: captured at start-up in "
                                 "seconds, nothing to keep)\n")
            continue
        for entry, built in done:
            size_mb = sum(p.stat().st_size for p in entry.files) / 1e6
            sys.stdout.write(f"{'built ' if built else 'cached'}  {entry.key.component:<12} {entry.main.name}  "
                             f"{size_mb:8.1f} MB\n")
            count += 1
    sys.stdout.write(f"{count} artefact(s) for {len(shapes)} shape(s) ready in {cache} "
                     f"({time.perf_counter() - t0:.0f} s)\n")
    return 0


def _check_backend(backend: str, device: str) -> None:
    from stream_core.accel.errors import AccelError

    try:
        if backend == "compile":
            if device == "cuda":
                from stream_core.accel.tensorrt_backend import require_cuda

                require_cuda("acceleration 'compile' on cuda")
        elif backend == "tensorrt":
            from stream_core.accel.tensorrt_backend import import_tensorrt, require_cuda

            import_tensorrt()
            require_cuda()
        else:
            from stream_core.accel.ort import import_ort

            import_ort()
            if device == "cuda":
                import torch

                from stream_core.accel.ort import resolve_provider

                resolve_provider("cuda", torch.device("cuda"))
    except AccelError as exc:
        raise CliError(str(exc), code=1) from None


def _row(st: Any) -> list[str]:
    f = st.fields
    size = f"{f['width']}x{f['height']}" if f.get("width") else "-"
    if f.get("component") in ("unet", "unet_res", "controlnet", "unet_cn", "unet_tmp", "unet_res_tmp"):
        batch = f"{f.get('batch')} (n{f.get('steps')} f{f.get('frame_buffer')} {f.get('cfg_type')})"
        if f.get("temporal_frames"):
            batch += f" bank {f['temporal_frames']}"
    else:
        batch = str(f.get("batch", "-"))
    model = str(st.info.get("model_source") or f.get("model", "?"))
    return [st.backend, str(f.get("component", "?")), size, batch, str(f.get("precision", "?")),
            str(f.get("runtime", "?")), str(f.get("device", "?")), f"{st.size / 1e6:.1f}",
            model if len(model) <= 40 else model[:37] + "...", st.stem if st.ok else f"{st.stem}  BAD: {st.reason}"]


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines) + "\n"


def _list(args: argparse.Namespace) -> int:
    from stream_core.accel.cache import EngineCache

    cache = EngineCache(_cache_dir(args))
    entries = cache.entries()
    if args.json:
        for st in entries:
            sys.stdout.write(json.dumps({"backend": st.backend, "file": st.stem, "ok": st.ok, "reason": st.reason,
                                         "size": st.size, "created": st.created, "files": st.files,
                                         "key": st.fields, "info": st.info}, sort_keys=True) + "\n")
        return 0
    if not entries:
        sys.stdout.write(f"{cache.root}: no cached engines\n")
        return 0
    header = ["backend", "component", "size", "batch", "prec", "runtime", "device", "MB", "model", "file"]
    sys.stdout.write(_table([_row(st) for st in entries], header))
    bad = sum(not st.ok for st in entries)
    sys.stdout.write(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in {cache.root}"
                     + (f", {bad} unreadable (run `streambridge engines verify`)" if bad else "") + "\n")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from stream_core.accel.cache import EngineCache

    cache = EngineCache(_cache_dir(args))
    results = cache.verify_all()
    bad = [st for st in results if not st.ok]
    for st in results:
        sys.stdout.write(f"{'ok  ' if st.ok else 'BAD '} {st.backend:<11} {st.stem}"
                         + (f"  -> quarantined: {st.reason}" if not st.ok else "") + "\n")
    if not results:
        sys.stdout.write(f"{cache.root}: no cached engines\n")
    elif bad:
        sys.stdout.write(f"{len(bad)} of {len(results)} bad, moved to quarantine/; rebuild with "
                         "`streambridge engines build`\n")
    else:
        sys.stdout.write(f"all {len(results)} good\n")
    return 1 if bad else 0
