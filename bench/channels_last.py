"""Memory layout and attention kernels: NCHW vs channels_last, sdpa vs math attention, in one run.

Random-weight models from ``make_tiny_model`` (tiny at 64x64, small at 128x128), U-Net batch 2
(2 steps, ``self`` guidance) and one frame through encode + decode, eager torch. The two layouts
and attention kernels are timed in interleaved rounds and the medians compared, so a noisy host
affects all alike. Prints ms per call and the speed-up; the ``compile`` backend's
``channels_last`` and ``attention`` defaults follow this measurement.

    .venv/bin/python bench/channels_last.py                   # CPU, ~1 min
    .venv/bin/python bench/channels_last.py --device cuda --dtype float16 --sizes small
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def _time(fn, calls: int, sync) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t0) / calls * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=5)
    args = ap.parse_args()

    from stream_core.accel.compiled import set_attention
    from stream_core.models import ModelSpec, load_components
    from stream_core.runner import TorchRunner
    from stream_core.tiny import make_tiny_model

    dev = torch.device(args.device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    print(f"torch {torch.__version__}, {args.device} {args.dtype}, threads {torch.get_num_threads()}")
    print("model  call           variant ms (speed-up over NCHW with sdpa attention)")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            px = 64 if size == "tiny" else 128
            folder = make_tiny_model(Path(tmp) / size, size=size)
            comps = load_components(ModelSpec(model=str(folder), device=args.device, dtype=args.dtype))
            base = TorchRunner(comps.unet, comps.vae)
            cl = TorchRunner(copy.deepcopy(comps.unet).to(memory_format=torch.channels_last),
                             copy.deepcopy(comps.vae).to(memory_format=torch.channels_last))
            math_unet = copy.deepcopy(comps.unet)
            set_attention(math_unet, "math")
            math = TorchRunner(math_unet, comps.vae)
            g = torch.Generator("cpu").manual_seed(0)
            dt = comps.dtype
            lat = torch.randn((2, 4, px // 8, px // 8), generator=g).to(dev, dt)
            ts = torch.tensor([359, 99], device=dev)
            dim = int(comps.unet.config.cross_attention_dim)
            text = torch.randn((2, 77, dim), generator=g).to(dev, dt)
            img = (torch.rand((1, 3, px, px), generator=g) * 2 - 1).to(dev, dt)
            calls = {
                "unet batch 2": (lambda r, lat=lat, ts=ts, text=text: lambda: r.unet(lat, ts, text)),
                "vae enc+dec": (lambda r, img=img: lambda: r.decode(r.encode(img))),
            }
            for name, make in calls.items():
                variants = {"NCHW sdpa": make(base), "channels_last": make(cl)}
                if name.startswith("unet"):
                    variants["math attention"] = make(math)
                for f in variants.values():  # warm up
                    f()
                times: dict[str, list[float]] = {k: [] for k in variants}
                for _ in range(args.rounds):
                    for k, f in variants.items():
                        times[k].append(_time(f, args.calls, sync))
                med = {k: statistics.median(v) for k, v in times.items()}
                ref = med["NCHW sdpa"]
                cells = "  ".join(f"{k} {m:.2f} ms ({ref / m:.2f}x)" for k, m in med.items())
                print(f"{size:<6} {name:<14} {cells}")


if __name__ == "__main__":
    main()
