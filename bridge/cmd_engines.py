"""``streambridge engines build | list | verify``: the engine cache, ahead of the show.

* ``build`` exports (ONNX Runtime) or builds (TensorRT) every graph for one stream configuration
  and verifies each against torch before it enters the cache. Exit 0 when all are ready.
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
from pathlib import Path
from typing import Any

from bridge.cli import CliError

log = logging.getLogger("streambridge.engines")

CFG_CHOICES = ("none", "full", "self", "initialize")
COMPONENT_CHOICES = ("unet", "vae_enc", "vae_dec", "text")


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
        help="build (TensorRT) or export+verify (onnxruntime) the engines for one configuration",
        description="Build every engine one stream configuration needs, ahead of the show. The "
        "shapes are static: size, steps, frame buffer and guidance mode must match the daemon's "
        "settings. Exit 0 when all engines are ready.",
    )
    build.add_argument("--model", default=None, help="diffusers folder or hub id (default: stabilityai/sd-turbo)")
    build.add_argument("--vae", default="taesd", help="taesd (default), full, or a VAE folder / hub id")
    build.add_argument("--lcm-lora", default="auto", help="auto (default), none, or a LoRA folder / hub id")
    build.add_argument("--lora", action="append", default=[], metavar="SRC[:SCALE]",
                       help="a LoRA to fuse (repeatable), optionally with its scale")
    build.add_argument("--size", default="512x512", help="WIDTHxHEIGHT, multiples of 8 (default 512x512)")
    build.add_argument("--steps", type=int, default=2, help="denoising steps = len(t_index_list) (default 2)")
    build.add_argument("--frame-buffer", type=int, default=1, help="frames per call (default 1)")
    build.add_argument("--cfg", choices=CFG_CHOICES, default="self", help="guidance mode (default self)")
    build.add_argument("--backend", choices=("tensorrt", "onnxruntime"), default=None,
                       help="default: tensorrt when a CUDA GPU is visible, else onnxruntime")
    build.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where to load the model (default: cuda for tensorrt, cpu for onnxruntime)")
    build.add_argument("--only", action="append", choices=COMPONENT_CHOICES, default=None,
                       help="build only this component (repeatable; default all four)")
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


def _build(args: argparse.Namespace) -> int:
    import torch

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

    width, height = parse_size(args.size)
    if args.steps < 1 or args.steps > 50:
        raise CliError(f"--steps should be within 1..50, got {args.steps}")
    if args.frame_buffer < 1:
        raise CliError(f"--frame-buffer should be >= 1, got {args.frame_buffer}")
    if args.workspace_gb <= 0:
        raise CliError(f"--workspace-gb should be positive, got {args.workspace_gb}")
    backend = args.backend or ("tensorrt" if torch.cuda.is_available() else "onnxruntime")
    device = args.device
    if device == "auto":
        device = "cuda" if backend == "tensorrt" else "cpu"
    dtype = "float32" if device == "cpu" else "float16"
    shape = StreamShape.for_stream(width, height, args.steps, args.frame_buffer, args.cfg)
    _check_backend(backend, device)  # before the (slow) model load
    cache = _cache_dir(args)
    log.info("building %s engines for %dx%d, steps %d, frame buffer %d, cfg %s (U-Net batch %d) in %s",
             backend, width, height, args.steps, args.frame_buffer, args.cfg, shape.batch, cache)
    spec = ModelSpec(model=args.model or DEFAULT_MODEL, vae=args.vae, lcm_lora=args.lcm_lora,
                     loras=tuple(LoraSpec(*_parse_lora(s)) for s in args.lora), device=device, dtype=dtype)
    try:
        components = load_components(spec)
    except (ModelNotFoundError, ModelLoadError, ValueError) as exc:
        raise CliError(str(exc), code=1) from None
    options = AccelOptions(exporter=args.exporter, trt_workspace=int(args.workspace_gb * (1 << 30)))
    t0 = time.perf_counter()
    try:
        done = build_engines(components, backend, shape, cache, which=tuple(args.only or COMPONENT_CHOICES),
                             force=args.force, options=options)
    except AccelError as exc:
        raise CliError(str(exc), code=1) from None
    for entry, built in done:
        size_mb = sum(p.stat().st_size for p in entry.files) / 1e6
        sys.stdout.write(f"{'built ' if built else 'cached'}  {entry.key.component:<8} {entry.main.name}  "
                         f"{size_mb:8.1f} MB\n")
    sys.stdout.write(f"{len(done)} engine(s) ready in {cache} ({time.perf_counter() - t0:.0f} s)\n")
    return 0


def _check_backend(backend: str, device: str) -> None:
    from stream_core.accel.errors import AccelError

    try:
        if backend == "tensorrt":
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
    if f.get("component") == "unet":
        batch = f"{f.get('batch')} (n{f.get('steps')} f{f.get('frame_buffer')} {f.get('cfg_type')})"
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
