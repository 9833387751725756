"""Cold vs warm start of ``acceleration: compile`` (inductor) with the persisted compile cache.

Runs the same start-up twice, each in a fresh Python process (so nothing is left in memory):
load the tiny model, ``build_runner(..., "compile", allow_build=True)`` with compile mode
``inductor``, then one pipeline frame. The first process finds an empty cache folder (cold: every
graph is compiled), the second finds the artefacts the first one persisted under
``<cache>/inductor/<key>/`` (warm). Prints both times and their ratio.

    .venv/bin/python bench/compile_start.py                 # tiny model, 64x64, CPU (minutes, cold)
    .venv/bin/python bench/compile_start.py --device cuda --size 512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    t0 = time.perf_counter()
    import torch

    from stream_core.accel import AccelOptions, build_runner
    from stream_core.models import ModelSpec, load_components
    from stream_core.pipeline import StreamPipeline, StreamSettings
    from stream_core.prompts import PromptEncoder
    from stream_core.tiny import make_tiny_model

    model = Path(args.cache) / "model"
    if not (model / "model_index.json").exists():
        make_tiny_model(model)
    comps = load_components(ModelSpec(model=str(model), device=args.device,
                                      dtype="float32" if args.device == "cpu" else "float16"))
    t_loaded = time.perf_counter()
    settings = StreamSettings(width=args.size, height=args.size, t_index_list=(32, 45), cfg_type="self")
    runner = build_runner(comps, "compile", batch=StreamPipeline.batch_for("self", 2, 1), width=args.size,
                          height=args.size, steps=2, cfg_type="self", cache_dir=args.cache, allow_build=True,
                          options=AccelOptions(compile_mode="inductor"))
    enc = PromptEncoder(comps.tokenizer, comps.text_encoder)
    pipe = StreamPipeline(runner, comps.scheduler, settings, enc.encode("a city"), enc.encode(""))
    images = torch.zeros((1, 3, args.size, args.size), device=comps.device, dtype=comps.dtype)
    pipe(images)
    if comps.device.type == "cuda":
        torch.cuda.synchronize()
    t_first = time.perf_counter()
    from torch._dynamo.utils import counters

    print(json.dumps({"total_s": t_first - t0, "load_s": t_loaded - t0, "compile_and_first_frame_s": t_first - t_loaded,
                      "fxgraph_cache_hit": int(counters["inductor"]["fxgraph_cache_hit"]),
                      "fxgraph_cache_miss": int(counters["inductor"]["fxgraph_cache_miss"])}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cache", default=None, help="cache folder (default: a new temporary one)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    cache = args.cache or tempfile.mkdtemp(prefix="sb-compile-start-")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    results = []
    for label in ("cold", "warm"):
        out = subprocess.run([sys.executable, __file__, "--child", "--device", args.device, "--size", str(args.size),
                              "--cache", cache], env=env, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{label}: start to first frame {r['total_s']:.1f} s (model load {r['load_s']:.1f} s, compile + "
              f"first frame {r['compile_and_first_frame_s']:.1f} s; FX graph cache hits {r['fxgraph_cache_hit']}, "
              f"misses {r['fxgraph_cache_miss']})")
    print(f"warm / cold: {results[1]['total_s'] / results[0]['total_s']:.2f} (cache: {cache})")


if __name__ == "__main__":
    main()
