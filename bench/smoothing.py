"""Temporal smoothing: how much frame-to-frame change (flicker) is left, and what it costs.

Runs the stream pipeline (tiny random model, CPU) over the same clip at several smoothing values
and prints, from one run, the mean absolute frame-to-frame change of the output as a ratio of the
unsmoothed run, and the time per frame. Two clips: unrelated random frames (the worst case for
flicker) and a slowly moving pattern (closer to a live camera).

Usage: python bench/smoothing.py [--frames 24] [--size 64] [--values 0.3,0.5,0.8]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from stream_core.models import ModelSpec, load_components
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.prompts import PromptEncoder
from stream_core.runner import TorchRunner
from stream_core.tiny import make_tiny_model


def clips(n: int, size: int) -> dict[str, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    random = [torch.rand((1, 3, size, size), generator=g) * 2 - 1 for _ in range(n)]
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    moving = []
    for k in range(n):
        phase = 2 * torch.pi * k / n
        img = torch.stack([torch.sin(6 * xs + phase), torch.cos(5 * ys - phase), torch.sin(4 * (xs + ys) + phase)])
        moving.append(img.unsqueeze(0) * 0.8)
    return {"random frames": random, "moving pattern": moving}


def run(components, embeds, clip, size: int, smoothing: float) -> tuple[float, float]:
    s = StreamSettings(width=size, height=size, t_index_list=(20, 32, 45), cfg_type="self", seed=4,
                       smoothing=smoothing)
    pipe = StreamPipeline(TorchRunner(components.unet, components.vae), components.scheduler, s, *embeds)
    pipe(clip[0])
    outs, t0 = [], time.perf_counter()
    for x in clip[1:]:
        outs.append(pipe(x))
    ms = 1000 * (time.perf_counter() - t0) / (len(clip) - 1)
    change = sum(float((b - a).abs().mean()) for a, b in zip(outs, outs[1:], strict=False)) / (len(outs) - 1)
    return change, ms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--values", default="0.3,0.5,0.8")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    values = [float(v) for v in args.values.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        components = load_components(ModelSpec(model=str(make_tiny_model(Path(tmp) / "tiny")), device="cpu",
                                               dtype="float32"))
    enc = PromptEncoder(components.tokenizer, components.text_encoder)
    embeds = (enc.encode("a red fox"), enc.encode(""))
    print(f"tiny random model, {args.size}x{args.size}, 3 steps, {args.frames} frames, torch {torch.__version__}")
    print(f"{'clip':<16}{'smoothing':>10}{'change left':>13}{'ms/frame':>10}")
    for name, clip in clips(args.frames, args.size).items():
        base, base_ms = run(components, embeds, clip, args.size, 0.0)
        print(f"{name:<16}{0.0:>10.2f}{1.0:>13.2f}{base_ms:>10.2f}")
        for v in values:
            change, ms = run(components, embeds, clip, args.size, v)
            print(f"{name:<16}{v:>10.2f}{change / base:>13.2f}{ms:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
