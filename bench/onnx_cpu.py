"""CPU benchmark: ONNX Runtime vs torch eager on the tiny and small random models.

For each model (``make_tiny_model(size="tiny")`` at 64x64, ``size="small"`` at 128x128), stream
of 2 steps, frame buffer 1, guidance ``self`` (U-Net batch 2):

* the U-Net call at the stream batch (``runner.unet``), and
* the whole pipeline per frame (encode + one stream-batched U-Net call + decode + the maths),

timed as medians over interleaved rounds (torch round, ONNX Runtime round, torch, ...) after a
warm-up, so a noisy host affects both sides alike. Prints a table with the ratios; the ONNX
export (seconds) is done once per model into a temporary cache and reported too.

    .venv/bin/python bench/onnx_cpu.py            # ~1-2 min on 2 cores
    .venv/bin/python bench/onnx_cpu.py --rounds 5 --calls 10
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# torch's OpenMP threads busy-wait between parallel regions by default; on a busy 2-vCPU VM that
# made the 12.5 M U-Net take 3.3 s per call instead of ~50 ms (seen here). Passive waiting keeps
# the comparison about the backends, not about the host's scheduler.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

MODELS = {"tiny": 64, "small": 128}
T_LIST = (32, 45)


def interleaved(fns: dict[str, Callable[[], Any]], *, rounds: int, calls: int, warmup: int = 2) -> dict[str, float]:
    """Median ms per call of each function, rounds interleaved."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - t0) * 1e3 / calls)
    return {k: statistics.median(v) for k, v in samples.items()}


def bench_model(size_name: str, res: int, workdir: Path, rounds: int, calls: int) -> list[dict[str, Any]]:
    from stream_core.accel import build_runner
    from stream_core.models import ModelSpec, load_components
    from stream_core.pipeline import StreamPipeline, StreamSettings
    from stream_core.prompts import PromptEncoder
    from stream_core.runner import TorchRunner
    from stream_core.tiny import make_tiny_model

    folder = make_tiny_model(workdir / size_name, size=size_name)
    comp = load_components(ModelSpec(model=str(folder), device="cpu", dtype="float32"))
    pos = PromptEncoder(comp.tokenizer, comp.text_encoder).encode("a neon city")

    def settings() -> StreamSettings:
        return StreamSettings(width=res, height=res, t_index_list=T_LIST, cfg_type="self", seed=3)

    torch_runner = TorchRunner(comp.unet, comp.vae)
    ref = StreamPipeline(torch_runner, comp.scheduler, settings(), pos)
    t0 = time.perf_counter()
    ort_runner = build_runner(comp, "onnxruntime", batch=ref.unet_batch, width=res, height=res,
                              cache_dir=workdir / "cache", allow_build=True, steps=len(T_LIST), cfg_type="self")
    export_s = time.perf_counter() - t0
    fast = StreamPipeline(ort_runner, comp.scheduler, settings(), pos)

    g = torch.Generator().manual_seed(0)
    b = ref.unet_batch
    latents = torch.randn((b, 4, res // 8, res // 8), generator=g)
    timesteps = torch.tensor([359, 99][:b]).long()
    text = pos.expand(b, -1, -1).contiguous()
    frames = [torch.rand((1, 3, res, res), generator=g) * 2 - 1 for _ in range(4)]
    diff = (ort_runner.unet(latents, timesteps, text) - torch_runner.unet(latents, timesteps, text)).abs().max()
    k = {"torch": 0, "ort": 0}

    def frame_fn(name: str, pipe: StreamPipeline) -> Callable[[], Any]:
        def run() -> Any:
            k[name] += 1
            return pipe(frames[k[name] % len(frames)])
        return run

    unet_ms = interleaved({"torch": lambda: torch_runner.unet(latents, timesteps, text),
                           "ort": lambda: ort_runner.unet(latents, timesteps, text)}, rounds=rounds, calls=calls)
    frame_ms = interleaved({"torch": frame_fn("torch", ref), "ort": frame_fn("ort", fast)}, rounds=rounds, calls=calls)
    out_diff = (ref(frames[0]) - fast(frames[0])).abs().max()
    params = sum(p.numel() for p in comp.unet.parameters()) / 1e6
    return [
        {"model": size_name, "unet_params_m": round(params, 1), "res": res, "what": f"U-Net batch {b}",
         "torch_ms": unet_ms["torch"], "ort_ms": unet_ms["ort"], "max_abs_diff": float(diff), "export_s": export_s},
        {"model": size_name, "unet_params_m": round(params, 1), "res": res, "what": "pipeline per frame",
         "torch_ms": frame_ms["torch"], "ort_ms": frame_ms["ort"], "max_abs_diff": float(out_diff), "export_s": export_s},
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--calls", type=int, default=5, help="calls per round (default 5)")
    ap.add_argument("--threads", type=int, default=None, help="torch/ORT threads (default: torch's)")
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sb-onnx-bench-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            if name not in MODELS:
                ap.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
            rows += bench_model(name, MODELS[name], Path(tmp), args.rounds, args.calls)
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"median of {args.rounds} interleaved rounds x {args.calls} calls, total {time.perf_counter() - t0:.0f} s")
    header = ["model", "U-Net M params", "image", "measured", "torch ms", "ORT ms", "ORT speed-up", "max |diff|", "export s"]
    table = [[r["model"], f"{r['unet_params_m']}", f"{r['res']}x{r['res']}", r["what"], f"{r['torch_ms']:.2f}",
              f"{r['ort_ms']:.2f}", f"{r['torch_ms'] / r['ort_ms']:.2f}x", f"{r['max_abs_diff']:.1e}", f"{r['export_s']:.1f}"]
             for r in rows]
    widths = [max(len(x[i]) for x in [header, *table]) for i in range(len(header))]
    for line in [header, ["-" * w for w in widths], *table]:
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
