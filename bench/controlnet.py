"""ControlNet cost per frame on the CPU: the stream with one ControlNet vs without, same run.

Usage: python bench/controlnet.py [--sizes 64,128] [--rounds 7] [--frames 6] [--cfg self]

The tiny random model and a tiny random ControlNet for it (the SD1.5 ControlNet architecture at
the tiny U-Net's size) are generated offline. For each size and step count (1 and 4 steps), three
pipelines process the same frames with their own control frames: no ControlNet, one ControlNet,
and one ControlNet at scale 0 (which must cost nothing: no call). Variants are interleaved round
by round and the medians of the per-frame times are compared, so machine noise hits all alike.
Prints per-frame milliseconds and the ratios (with / without), and a JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from stream_core.controlnet import ControlNetSpec, LoadedControlNet
from stream_core.models import ModelSpec, load_components
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.prompts import PromptEncoder
from stream_core.runner import CountingRunner, TorchRunner
from stream_core.tiny import make_tiny_controlnet, make_tiny_model

STEPS = {1: (35,), 4: (10, 20, 32, 45)}


def build(components, enc, size: int, t_list, cfg: str, unit: LoadedControlNet | None) -> StreamPipeline:
    s = StreamSettings(width=size, height=size, t_index_list=t_list, cfg_type=cfg, guidance_scale=1.5, seed=3)
    units = [unit] if unit is not None else []
    runner = CountingRunner(TorchRunner(components.unet, components.vae, [u.model for u in units]))
    return StreamPipeline(runner, components.scheduler, s, enc.encode("a neon city"), enc.encode(""),
                          controlnets=units)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--cfg", default="self", choices=["none", "full", "self", "initialize"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="sb-cn-bench-") as tmp:
        model = make_tiny_model(Path(tmp) / "tiny")
        cn_dir = make_tiny_controlnet(Path(tmp) / "cn", model)
        comps = load_components(ModelSpec(model=str(model), device="cpu", dtype="float32"),
                                controlnets=[ControlNetSpec(str(cn_dir))])
        unit = comps.controlnets[0]
        zero = LoadedControlNet(ControlNetSpec(str(cn_dir), scale=0.0), unit.model)
        enc = PromptEncoder(comps.tokenizer, comps.text_encoder)
        for size in sizes:
            g = torch.Generator().manual_seed(1)
            clip = [torch.rand((1, 3, size, size), generator=g) * 2 - 1 for _ in range(args.frames)]
            ctl = [torch.rand((1, 3, size, size), generator=g) for _ in range(args.frames)]
            for n, t_list in STEPS.items():
                pipes = {"plain": build(comps, enc, size, t_list, args.cfg, None),
                         "controlnet": build(comps, enc, size, t_list, args.cfg, unit),
                         "scale0": build(comps, enc, size, t_list, args.cfg, zero)}
                control = {"plain": None, "controlnet": True, "scale0": True}
                times: dict[str, list[float]] = {k: [] for k in pipes}
                with torch.inference_mode():
                    for name, p in pipes.items():  # warm up and prime
                        for k in range(2):
                            p(clip[k], [ctl[k]] if control[name] else None)
                    for _ in range(args.rounds):
                        for name, p in pipes.items():
                            t0 = time.perf_counter()
                            for x, c in zip(clip, ctl, strict=True):
                                p(x, [c] if control[name] else None)
                            times[name].append((time.perf_counter() - t0) / len(clip))
                med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
                cn_calls = len(pipes["controlnet"].runner.controlnet_calls)
                unet_calls = len(pipes["controlnet"].runner.unet_batches)
                row = {"size": size, "steps": n, "cfg": args.cfg, "ms_plain": round(med["plain"], 2),
                       "ms_controlnet": round(med["controlnet"], 2), "ms_scale0": round(med["scale0"], 2),
                       "ratio_controlnet": round(med["controlnet"] / med["plain"], 3),
                       "ratio_scale0": round(med["scale0"] / med["plain"], 3),
                       "controlnet_calls_per_unet_call": cn_calls / unet_calls,
                       "scale0_controlnet_calls": len(pipes["scale0"].runner.controlnet_calls)}
                results.append(row)
                print(f"{size:4d}px {n} step(s) {args.cfg}: plain {med['plain']:7.2f} ms/frame, one ControlNet "
                      f"{med['controlnet']:7.2f} ms ({row['ratio_controlnet']:.2f}x), scale 0 {med['scale0']:7.2f} ms "
                      f"({row['ratio_scale0']:.2f}x); ControlNet calls per U-Net call "
                      f"{row['controlnet_calls_per_unet_call']:.0f}, at scale 0: {row['scale0_controlnet_calls']}")
    print(json.dumps({"bench": "controlnet", "machine": platform.machine(), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
