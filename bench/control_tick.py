"""What applying live parameter changes costs the render thread per frame (one controller tick).

A real daemon (the tiny generated model at 64x64, 2 steps, a pattern source, a null sink) is
started, its render loop is held, and this process then calls the controller's ``tick()`` the way
the render loop does, after queueing a batch of changes each time, and times it:

* idle: nothing queued (the cost every frame pays);
* faders: 8 float parameters that all change every tick (strength, guidance, delta, prompt mix,
  seed mix, dry/wet mix, smoothing, transition);
* faders + seeds: the same plus two new random seeds every tick (the worst case: new noise drawn
  for both every frame), i.e. the 10 parameters of ``bench/flood.py``'s steady load.

Each variant runs in interleaved rounds; the median microseconds per tick are printed. This
isolates the render thread's own work; ``bench/flood.py`` measures the whole daemon under OSC load.

Usage: .venv/bin/python bench/control_tick.py [--ticks 500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=500, help="ticks per round and variant")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.ERROR)
    import torch

    from bridge.config import DaemonConfig
    from bridge.control.surface import SetParams
    from bridge.daemon import Daemon, DaemonOptions
    from stream_core.tiny import make_tiny_model

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="control-tick-"))
    model = make_tiny_model(tmp / "model")
    (tmp / "presets").mkdir()
    cfg = DaemonConfig.model_validate({
        "model": {"model": str(model), "device": "cpu", "dtype": "float32"},
        "pipeline": {"size": [64, 64], "steps": [32, 45], "cfg": "self"},
        "source": {"type": "pattern", "width": 64, "height": 64, "fps": 30},
        "sinks": [{"type": "null"}],
        "osc": {"enabled": False},
        "presets": {"folder": str(tmp / "presets")},
    })
    daemon = Daemon(cfg, DaemonOptions(prewarm_timeout=30))
    daemon.start()
    try:
        time.sleep(1.0)
        daemon.render.step = lambda timeout=0.05: time.sleep(0.01)  # hold the render loop: we tick
        time.sleep(0.2)
        ctl = daemon.controller
        rng = random.Random(3)

        def faders() -> dict[str, float]:
            return {"strength": rng.random(), "guidance": 5 * rng.random(), "delta": 2 * rng.random(),
                    "prompt_mix": rng.random(), "seed_mix": rng.random(), "mix": 0.5 + 0.5 * rng.random(),
                    "smoothing": 0.9 * rng.random(), "transition": 10 * rng.random()}

        def seeds() -> dict[str, float]:
            return {**faders(), "seed": rng.randrange(10000), "seed_b": rng.randrange(10000)}

        variants = {"idle": None, "faders": faders, "faders + seeds": seeds}
        results: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, make in variants.items():
                spent = 0.0
                for _ in range(args.ticks):
                    if make is not None:
                        ctl.submit([SetParams(make())])
                    t0 = time.perf_counter()
                    ctl.tick()
                    spent += time.perf_counter() - t0
                results[name].append(1e6 * spent / args.ticks)
    finally:
        daemon.stop()
    print(f"tiny model 64x64, 2 steps, torch {torch.__version__}, 1 torch thread, {args.rounds} rounds x "
          f"{args.ticks} ticks (median, min-max of the rounds):")
    for name, values in results.items():
        print(f"  {name:15s} {statistics.median(values):7.1f} us per tick  ({min(values):.1f}-{max(values):.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
