"""Flicker: cached attention, feature injection, latent feedback and smoothing on a moving input.

Runs the stream pipeline over a slowly moving pattern once per variant, the variants interleaved
frame by frame (so a noisy host slows them alike), and prints from that one run:

* ``flicker``: mean absolute frame-to-frame change of the output latent (what the VAE decodes)
  divided by that of the input latent (lower: steadier; the input's own motion sets the scale).
  Latents in, latents out (``StreamPipeline.denoise``): the random VAE of the generated test model
  maps every image to nearly the same latent and squashes its images to flat colour, which would
  hide every difference;
* ``vs off``: that flicker as a ratio of the run with everything off;
* ``drift``: mean absolute difference from the "off" output of the same frame (how far the variant
  moves away from the per-frame result: lag, ghosting, or the bank's pull);
* ``ms/frame``: median time of one stream call without the VAE (U-Net and step maths: where the
  variants differ).

Variants: off, cache 1 (bank of 1 frame), cache 2, cache 2 + injection, feedback 0.3, smoothing 0.5.
The default model is the tiny random one generated offline (its attention is random, so the
numbers show the mechanics and the cost, not how a trained model looks); ``--model PATH`` runs a
diffusers folder instead.

Usage: python bench/flicker.py [--frames 32] [--size 64] [--model tiny|small|PATH] [--injection 0.5]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
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


def moving_clip(n: int, size: int, speed: float = 0.08) -> list[torch.Tensor]:
    """Latents of a pattern drifting slowly (a live camera on a slow scene): (1, 4, size/8, size/8),
    unit scale. The stream runs on latents directly (``StreamPipeline.denoise``): the generated
    test model's random VAE maps every image to nearly the same latent, which would hide motion."""
    h = size // 8
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, h), indexing="ij")
    frames = []
    for k in range(n):
        t = speed * k
        z = torch.stack([torch.sin(7 * xs + t) * torch.cos(5 * ys - 0.5 * t),
                         torch.cos(6 * ys - t),
                         torch.sin(4 * (xs + ys) + 0.7 * t),
                         torch.cos(3 * xs - 2 * ys + 0.4 * t)])
        frames.append(z.unsqueeze(0))
    return frames


def variants(injection: float) -> dict[str, dict]:
    return {
        "off": {},
        "cache 1": {"temporal_max_frames": 1},
        "cache 2": {"temporal_max_frames": 2},
        f"cache 2 + injection {injection:g}": {"temporal_max_frames": 2, "temporal_injection": injection},
        "feedback 0.3": {"latent_feedback": 0.3},
        "smoothing 0.5": {"smoothing": 0.5},
    }


def build(components, embeds, size: int, steps: tuple[int, ...], extra: dict) -> StreamPipeline:
    s = StreamSettings(width=size, height=size, t_index_list=steps, cfg_type="self", seed=4, **extra)
    unet = copy.deepcopy(components.unet) if extra.get("temporal_max_frames") else components.unet
    return StreamPipeline(TorchRunner(unet, components.vae), components.scheduler, s, *embeds)


def mean_change(frames: list[torch.Tensor]) -> float:
    return sum(float((b - a).abs().mean()) for a, b in zip(frames, frames[1:], strict=False)) / (len(frames) - 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--model", default="tiny", help="tiny | small (random, generated offline) | a diffusers folder")
    ap.add_argument("--steps", default="20,32,45", help="t_index_list")
    ap.add_argument("--injection", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    steps = tuple(int(s) for s in args.steps.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model
        if args.model in ("tiny", "small"):
            folder = str(make_tiny_model(Path(tmp) / args.model, size=args.model))
        components = load_components(ModelSpec(model=folder, device="cpu", dtype="float32"))
    enc = PromptEncoder(components.tokenizer, components.text_encoder)
    embeds = (enc.encode("a red fox in the snow"), enc.encode(""))
    clip = moving_clip(args.frames, args.size)
    pipes = {name: build(components, embeds, args.size, steps, extra) for name, extra in variants(args.injection).items()}
    outs: dict[str, list[torch.Tensor]] = {k: [] for k in pipes}
    times: dict[str, list[float]] = {k: [] for k in pipes}
    with torch.inference_mode():
        for k, x in enumerate(clip):
            for name, pipe in pipes.items():
                t0 = time.perf_counter()
                pipe.denoise(x)
                dt = time.perf_counter() - t0
                if k >= 2:  # after the start-up (the first call primes the stream and fills the bank)
                    outs[name].append(pipe._smooth_prev.clone())  # the output latent that was decoded
                    times[name].append(dt)
    input_change = mean_change(clip[2:])
    base = mean_change(outs["off"]) / input_change
    print(f"model {args.model}, {args.size}x{args.size}, steps {list(steps)}, {args.frames} frames, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"input latent mean frame-to-frame change {input_change:.4f}")
    print(f"{'variant':<28}{'flicker':>9}{'vs off':>8}{'drift':>9}{'ms/frame':>10}{'cost x':>8}")
    base_ms = statistics.median(times["off"]) * 1000
    for name in pipes:
        flicker = mean_change(outs[name]) / input_change
        drift = sum(float((a - b).abs().mean()) for a, b in zip(outs[name], outs["off"], strict=True)) / len(outs[name])
        ms = statistics.median(times[name]) * 1000
        print(f"{name:<28}{flicker:>9.3f}{flicker / base:>8.3f}{drift:>9.4f}{ms:>10.2f}{ms / base_ms:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
