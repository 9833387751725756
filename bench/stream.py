"""Pipeline benchmark: stream batch vs sequential denoising, and self-RCFG vs full CFG.

Usage: python bench/stream.py [--sizes 64,256] [--rounds 7] [--frames 8] [--model-size tiny]

Every variant processes the same frames; variants are interleaved round by round and the medians
of the per-frame times are compared, so machine noise hits all of them alike. The tiny random
model is generated offline on first use.
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

import torch

from stream_core.models import ModelSpec, load_components
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.prompts import PromptEncoder
from stream_core.runner import TorchRunner
from stream_core.tiny import make_tiny_model

N4 = (10, 20, 32, 45)


def build(components, enc, size, cfg, batch: bool, t_list=N4, backend: str = "none") -> StreamPipeline:
    s = StreamSettings(width=size, height=size, t_index_list=t_list, cfg_type=cfg, guidance_scale=1.5,
                       seed=3, denoising_batch=batch)
    if backend == "none":
        runner = TorchRunner(components.unet, components.vae)
    else:
        from stream_core.accel import build_runner

        runner = build_runner(
            components, backend, batch=StreamPipeline.batch_for(cfg, len(t_list), 1), width=size, height=size,
            cache_dir=Path(tempfile.gettempdir()) / "streambridge-bench-engines", allow_build=True,
            frame_buffer_size=1, steps=len(t_list), cfg_type=cfg,
        )
    return StreamPipeline(runner, components.scheduler, s, enc.encode("a neon city"), enc.encode(""))


def time_frames(pipe: StreamPipeline, clip: list[torch.Tensor]) -> float:
    """Seconds per frame over the clip (the pipeline is already primed)."""
    t0 = time.perf_counter()
    for x in clip:
        pipe(x)
    return (time.perf_counter() - t0) / len(clip)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cache = Path(tempfile.gettempdir()) / f"streambridge-bench-{args.model_size}"
    if not (cache / "model_index.json").exists():
        make_tiny_model(cache, size=args.model_size)
    comp = load_components(ModelSpec(model=str(cache), device=args.device, dtype=args.dtype))
    enc = PromptEncoder(comp.tokenizer, comp.text_encoder)
    results = {}
    for size in args.sizes:
        g = torch.Generator().manual_seed(1)
        clip = [(torch.rand((1, 3, size, size), generator=g) * 2 - 1).to(comp.device, comp.dtype)
                for _ in range(args.frames)]
        variants = {
            "stream_batch": build(comp, enc, size, "self", True),
            "sequential": build(comp, enc, size, "self", False),
            "self_cfg": build(comp, enc, size, "self", True),
            "full_cfg": build(comp, enc, size, "full", True),
        }
        if args.onnxruntime:
            variants["ort_self_cfg"] = build(comp, enc, size, "self", True, backend="onnxruntime")
            variants["ort_full_cfg"] = build(comp, enc, size, "full", True, backend="onnxruntime")
        for p in variants.values():  # warm-up + priming
            time_frames(p, clip[:2])
        samples: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, p in variants.items():
                samples[name].append(time_frames(p, clip))
        med = {k: statistics.median(v) for k, v in samples.items()}
        results[size] = {
            "ms_per_frame": {k: round(v * 1000, 3) for k, v in med.items()},
            "stream_vs_sequential": round(med["sequential"] / med["stream_batch"], 3),
            "self_vs_full": round(med["full_cfg"] / med["self_cfg"], 3),
        }
        if args.onnxruntime:
            results[size]["ort_self_vs_full"] = round(med["ort_full_cfg"] / med["ort_self_cfg"], 3)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,256", help="comma-separated square sizes in px")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--model-size", choices=["tiny", "small"], default="tiny")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: small calls are dominated by thread wake-ups)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--onnxruntime", action="store_true",
                    help="also time self vs full CFG on the onnxruntime backend (exports once)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    res = run(args)
    print(f"# bench/stream.py  {time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}"
          f"  torch {torch.__version__}  threads {args.threads}  model {args.model_size}  n=4")
    print(f"{'size':>6} {'stream ms':>10} {'seq ms':>9} {'stream/seq x':>13} {'self ms':>9} {'full ms':>9} {'self/full x':>12}")
    for size, r in res.items():
        m = r["ms_per_frame"]
        print(f"{size:>6} {m['stream_batch']:>10.2f} {m['sequential']:>9.2f} {r['stream_vs_sequential']:>13.2f}"
              f" {m['self_cfg']:>9.2f} {m['full_cfg']:>9.2f} {r['self_vs_full']:>12.2f}")
    if args.onnxruntime:
        print("onnxruntime backend, same pipeline:")
        print(f"{'size':>6} {'self ms':>9} {'full ms':>9} {'self/full x':>12}")
        for size, r in res.items():
            m = r["ms_per_frame"]
            print(f"{size:>6} {m['ort_self_cfg']:>9.2f} {m['ort_full_cfg']:>9.2f} {r['ort_self_vs_full']:>12.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
