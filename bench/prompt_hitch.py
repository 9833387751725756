"""Frame pacing while prompts stream in over OSC at 10 Hz (the prompt-switch hitch benchmark).

Runs the real daemon in-process (tiny model, pattern source, real OSC over loopback), first
without prompt traffic, then with a new, never-seen prompt every 100 ms, and prints the frame
intervals of the render loop for both phases from one run. Goal: the longest interval with
prompts stays within 1.5x the median.

Usage: python bench/prompt_hitch.py [--seconds 5] [--fps 20] [--encode-delay 0.0]
(--encode-delay adds a sleep to every encode, to mimic a large text encoder.)
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pythonosc.udp_client import SimpleUDPClient

from bridge.config import DaemonConfig
from bridge.daemon import Daemon, DaemonOptions
from stream_core.tiny import make_tiny_model


def phase(d: Daemon, seconds: float, prompts: bool) -> list[float]:
    starts: list[float] = []
    orig = d.engine.process

    def timed(frames):
        starts.append(time.perf_counter())
        return orig(frames)

    d.engine.process = timed
    client = SimpleUDPClient(*d.osc.address)
    t_end = time.monotonic() + seconds
    k = 0
    try:
        while time.monotonic() < t_end:
            if prompts:
                client.send_message("/sd/prompt", f"prompt {k} {time.monotonic()}")
                k += 1
            time.sleep(0.1)
    finally:
        del d.engine.process
    return [b - a for a, b in zip(starts, starts[1:], strict=False)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--fps", type=float, default=20.0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--encode-delay", type=float, default=0.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model = Path(tempfile.gettempdir()) / "streambridge-bench-tiny"
    if not (model / "model_index.json").exists():
        make_tiny_model(model)
    cfg = DaemonConfig.model_validate({
        "model": {"model": str(model), "device": "cpu"},
        "pipeline": {"size": [args.size, args.size], "steps": [32, 45]},
        "source": {"type": "pattern", "width": args.size, "height": args.size, "fps": args.fps},
        "sinks": [{"type": "null"}],
        "osc": {"listen": "127.0.0.1:0"},
        "presets": {"folder": str(Path(__file__).resolve().parent.parent / "presets")},
    })
    d = Daemon(cfg, DaemonOptions(prewarm_timeout=60))
    d.start()
    if args.encode_delay > 0:
        real = d.cache._encode_fn

        def slow(text):
            time.sleep(args.encode_delay)
            return real(text)

        d.cache._encode_fn = slow
    try:
        time.sleep(1.0)
        quiet = phase(d, args.seconds, prompts=False)
        busy = phase(d, args.seconds, prompts=True)
        encodes = d.cache.stats().encodes
    finally:
        d.stop()
    print(f"# bench/prompt_hitch.py  {time.strftime('%Y-%m-%d')}  source {args.fps:g} fps  "
          f"{args.size}px tiny model  encode delay {args.encode_delay * 1000:.0f} ms")
    print(f"{'phase':<22} {'frames':>7} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'max/median':>11}")
    for name, iv in (("no prompts", quiet), ("prompts at 10 Hz", busy)):
        med = statistics.median(iv)
        p95 = sorted(iv)[int(0.95 * (len(iv) - 1))]
        print(f"{name:<22} {len(iv) + 1:>7} {med * 1000:>10.1f} {p95 * 1000:>8.1f} {max(iv) * 1000:>8.1f}"
              f" {max(iv) / med:>11.2f}")
    print(f"prompt encodes during the run: {encodes}")
    ratio = max(busy) / statistics.median(busy)
    print(f"goal: max/median with prompts <= 1.5 -> {'PASS' if ratio <= 1.5 else 'MISS'} ({ratio:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
