"""``streambridge models make-tiny DIR``: a tiny random SD model for demos and tests, offline."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from bridge.cli import CliError

log = logging.getLogger("streambridge.models")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model utilities")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    mk = msub.add_parser("make-tiny", help="write a tiny random diffusers-format model (no download)")
    mk.add_argument("dir", help="output folder")
    mk.add_argument("--size", choices=["tiny", "small"], default="tiny")
    mk.add_argument("--seed", type=int, default=0)
    mk.set_defaults(func=make_tiny)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def make_tiny(args: argparse.Namespace) -> int:
    from stream_core.tiny import make_tiny_model

    out = Path(args.dir)
    if out.exists() and any(out.iterdir()) and not (out / "model_index.json").exists():
        raise CliError(f"{out} exists and is not empty (and holds no model); pick another folder")
    t0 = time.perf_counter()
    try:
        make_tiny_model(out, seed=args.seed, size=args.size)
    except OSError as exc:
        raise CliError(f"{out}: cannot write the model: {exc.strerror or exc}", code=1) from None
    log.info("wrote a %s random model to %s in %.1f s", args.size, out, time.perf_counter() - t0)
    return 0
