"""``streambridge models fetch NAME``: download a model (and what it needs) into the local Hugging
Face cache ahead of the show; ``streambridge models make-tiny DIR``: a tiny random SD model for
demos and tests, offline. Nothing else in StreamBridge goes online."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

from bridge.cli import CliError

log = logging.getLogger("streambridge.models")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model utilities")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    mk = msub.add_parser("make-tiny", help="write a tiny random diffusers-format model (no download)")
    mk.add_argument("dir", help="output folder")
    mk.add_argument("--size", choices=["tiny", "small"], default="tiny")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--controlnet", metavar="CN_DIR", default=None,
                    help="also write a tiny random ControlNet matching the model's U-Net (diffusers "
                    "ControlNetModel, the SD1.5 ControlNet architecture) to CN_DIR")
    mk.add_argument("--depth-model", metavar="DEPTH_DIR", default=None,
                    help="also write a tiny random depth-estimation model (transformers DPT) to DEPTH_DIR, "
                    "for the ControlNet preprocessor 'depth'")
    mk.set_defaults(func=make_tiny)
    fe = msub.add_parser("fetch", help="download a model from the Hugging Face hub into the local cache "
                         "(the only command that goes online)")
    fe.add_argument("name", help="hub id, e.g. stabilityai/sd-turbo (a LoRA or VAE id works too)")
    fe.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    fe.add_argument("--no-deps", action="store_true",
                    help="only NAME, not the TAESD VAE / LCM-LoRA a diffusers model needs by default")
    fe.set_defaults(func=fetch)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def make_tiny(args: argparse.Namespace) -> int:
    from stream_core.tiny import make_tiny_controlnet, make_tiny_depth_model, make_tiny_model

    out = Path(args.dir)
    if out.exists() and any(out.iterdir()) and not (out / "model_index.json").exists():
        raise CliError(f"{out} exists and is not empty (and holds no model); pick another folder")
    extras = [Path(p) for p in (args.controlnet, args.depth_model) if p]
    for extra in extras:
        if extra.exists() and any(extra.iterdir()) and not (extra / "config.json").exists():
            raise CliError(f"{extra} exists and is not empty (and holds no model); pick another folder")
    t0 = time.perf_counter()
    try:
        make_tiny_model(out, seed=args.seed, size=args.size)
        log.info("wrote a %s random model to %s in %.1f s", args.size, out, time.perf_counter() - t0)
        if args.controlnet:
            make_tiny_controlnet(args.controlnet, out, seed=args.seed + 1)
            log.info("wrote a random ControlNet for it to %s", args.controlnet)
        if args.depth_model:
            make_tiny_depth_model(args.depth_model, seed=args.seed + 2)
            log.info("wrote a random depth-estimation model to %s", args.depth_model)
    except OSError as exc:
        raise CliError(f"cannot write the model: {exc.strerror or exc} ({exc.filename or out})", code=1) from None
    return 0


#: what loading a diffusers-format model reads: configs, tokenizer files and the default
#: (non-variant) weights of each component; never root single-file checkpoints or fp16 copies
DIFFUSERS_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model"]
SKIP_PATTERNS = ["*.fp16.*", "*non_ema*", "*.ema.*", "*.ckpt", "*.msgpack", "*.onnx", "*.onnx_data", "*.pb",
                 "*.h5", "*.ot", "*.mlmodel*"]


def fetch_plan(name: str, files: list[str]) -> dict[str, Any]:
    """snapshot_download keyword arguments for ``name`` given the repo's file list."""
    if "model_index.json" in files:
        weights = "*/*.safetensors" if any(f.endswith(".safetensors") and "/" in f for f in files) else "*/*.bin"
        return {"allow_patterns": [*DIFFUSERS_PATTERNS, weights], "ignore_patterns": SKIP_PATTERNS}
    return {"allow_patterns": None, "ignore_patterns": SKIP_PATTERNS}


def fetch(args: argparse.Namespace) -> int:
    from stream_core.weights import LCM_LORA_SD15, TAESD_ID, looks_like_hub_id

    if not looks_like_hub_id(args.name):
        raise CliError(f"{args.name!r} is not a hub id like 'org/name'", code=2)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise CliError("HF_HUB_OFFLINE is set in this environment: unset it to download", code=1)
    folder = _download(args.name, args.revision)
    if args.no_deps or not (folder / "model_index.json").is_file():
        return 0
    import json

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    if (index.get("vae") or [None, None])[1] != "AutoencoderTiny":
        _download(TAESD_ID, None)  # vae: taesd (the default) uses it
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        unet = {}
    sched = (index.get("scheduler") or [None, None])[1]
    if (unet.get("cross_attention_dim") == 768 and tuple(unet.get("block_out_channels") or ()) == (320, 640, 1280, 1280)
            and not unet.get("time_cond_proj_dim") and sched != "LCMScheduler"):
        _download(LCM_LORA_SD15, None)  # lcm_lora: auto fuses it into SD 1.x models
    return 0


def _download(name: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import HfApi, snapshot_download
    except ImportError:
        raise CliError("downloading needs huggingface_hub: pip install huggingface_hub", code=1) from None
    t0 = time.perf_counter()
    log.info("fetching %s%s from the Hugging Face hub", name, f" @ {revision}" if revision else "")
    try:
        files = HfApi().list_repo_files(name, revision=revision)
        # progress bars: huggingface_hub's own tqdm bars on stderr (HF_HUB_DISABLE_PROGRESS_BARS=1 hides them)
        path = snapshot_download(name, revision=revision, **fetch_plan(name, files))
    except Exception as exc:  # not found, no network (httpx / OSError), disk full: one line, no traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CliError(f"cannot fetch {name}: {type(exc).__name__}: {first}", code=1) from None
    log.info("%s is in the local cache (%s) after %.1f s", name, path, time.perf_counter() - t0)
    return Path(path)
