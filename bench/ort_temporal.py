"""The temporal bank under ONNX Runtime vs eager, on the CPU: cost per frame, interleaved in one run.

Variants (the whole pipeline call, VAE included, one frame per call):

* ``eager``: the torch pipeline without a bank; ``eager + bank``: with a bank of ``--frames``
  slots (cache on, injection ``--injection``);
* ``ort``: the ONNX Runtime runner without a bank; ``ort + bank``: the ``unet_tmp`` graph with the
  same bank (the bank adopts the graph's input buffers: a call copies no ring).

Each round runs every variant for ``--calls`` frames, the variants interleaved, so a noisy host
slows them alike; the medians over ``--rounds`` rounds and their ratios are printed, with the max
abs difference of the ``ort + bank`` frames from the ``eager + bank`` ones. The model is the tiny
random one generated offline (``--model small`` a 12.5 M-parameter one at 128x128): it shows the
mechanics and the cost, not the look.

Usage: python bench/ort_temporal.py [--model tiny|small] [--rounds 7] [--calls 5] [--frames 2]
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

from stream_core.accel import AccelOptions, build_runner
from stream_core.models import ModelSpec, load_components
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.prompts import PromptEncoder
from stream_core.runner import TorchRunner
from stream_core.tiny import make_tiny_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("tiny", "small"), default="tiny")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--frames", type=int, default=2, help="the bank's built size (max_frames)")
    ap.add_argument("--injection", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--exporter", choices=("dynamo", "torchscript"), default="torchscript")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="ort-temporal-"))
    size = 64 if args.model == "tiny" else 128
    folder = make_tiny_model(work / args.model, size=args.model)
    comps = load_components(ModelSpec(model=str(folder), device="cpu", dtype="float32"))
    enc = PromptEncoder(comps.tokenizer, comps.text_encoder)
    embeds = (enc.encode("a neon city at night"), enc.encode(""))
    steps = (32, 45)

    def settings(bank: bool) -> StreamSettings:
        kw = {"temporal_max_frames": args.frames, "temporal_injection": args.injection} if bank else {}
        return StreamSettings(width=size, height=size, t_index_list=steps, cfg_type="self", seed=4, **kw)

    t0 = time.perf_counter()
    opts = AccelOptions(exporter=args.exporter, ort_threads=args.threads)
    runners = {bank: build_runner(comps, "onnxruntime", batch=len(steps), width=size, height=size,
                                  cache_dir=work / "cache", allow_build=True, steps=len(steps), cfg_type="self",
                                  options=opts, temporal_frames=args.frames if bank else 0)
               for bank in (False, True)}
    build_s = time.perf_counter() - t0
    pipes = {
        "eager": StreamPipeline(TorchRunner(comps.unet, comps.vae), comps.scheduler, settings(False), *embeds),
        "eager + bank": StreamPipeline(TorchRunner(copy.deepcopy(comps.unet), comps.vae), comps.scheduler,
                                       settings(True), *embeds),
        "ort": StreamPipeline(runners[False], comps.scheduler, settings(False), *embeds),
        "ort + bank": StreamPipeline(runners[True], comps.scheduler, settings(True), *embeds),
    }
    g = torch.Generator().manual_seed(1)
    base = torch.rand((1, 3, size, size), generator=g) * 2 - 1
    frames = [torch.roll(base, shifts=k, dims=3) for k in range(args.calls)]
    times: dict[str, list[float]] = {name: [] for name in pipes}
    diff = 0.0
    for p in pipes.values():  # warm-up (and priming)
        p(frames[0])
    for _ in range(args.rounds):
        outs: dict[str, list[torch.Tensor]] = {}
        for name, p in pipes.items():
            t = time.perf_counter()
            outs[name] = [p(f) for f in frames]
            times[name].append((time.perf_counter() - t) / args.calls * 1e3)
        diff = max(diff, max(float((a - b).abs().max()) for a, b in zip(outs["ort + bank"], outs["eager + bank"],
                                                                           strict=True)))
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"model {args.model} {size}x{size}, 2 steps, self guidance, bank of {args.frames} frame(s), injection "
          f"{args.injection}, {args.threads} thread(s), {args.rounds} rounds x {args.calls} frames; graphs exported "
          f"({args.exporter}) and verified in {build_s:.1f} s")
    for name, ms in med.items():
        print(f"  {name:<13} {ms:8.2f} ms/frame")
    print(f"ort + bank vs eager + bank: {med['eager + bank'] / med['ort + bank']:.2f}x faster")
    print(f"bank cost, eager: {med['eager + bank'] / med['eager']:.2f}x; ort: {med['ort + bank'] / med['ort']:.2f}x")
    print(f"max abs diff ort + bank vs eager + bank: {diff:.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
