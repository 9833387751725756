"""What LFOs and the beat clock cost the render loop's control tick.

Runs the live controller's tick (the per-frame control step on the render thread) against the
real stream pipeline (tiny random model, CPU) in three set-ups, interleaved round by round:
no LFO, one LFO on guidance, and an LFO on each of the eight targets (the prompt and seed
crossfaders re-blend embeddings and noise every tick). Prints the median microseconds per tick
of each and its ratio to the no-LFO tick, next to the time of one stream call for scale.

Usage: python bench/tempo_tick.py [--ticks 300] [--rounds 5]
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
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from bridge.control.surface import SetParams, lfo_key
from bridge.lfo import LFO_TARGETS
from bridge.live import LiveController
from bridge.presets import ColdSettings
from bridge.prompt_cache import PromptCache
from stream_core.models import ModelSpec, load_components
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.prompts import PromptEncoder
from stream_core.runner import TorchRunner
from stream_core.tiny import make_tiny_model

SIZE = 64


def controller(components, enc, lfos: list[str]) -> tuple[LiveController, StreamPipeline, PromptCache]:
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(32, 45), cfg_type="self", seed=2)
    pipe = StreamPipeline(TorchRunner(components.unet, components.vae), components.scheduler, s,
                          enc.encode("a red fox"), enc.encode(""))
    cache = PromptCache(enc.encode)
    cold = ColdSettings(model="tiny", vae=None, size=(SIZE, SIZE), steps=2, frame_buffer=1, cfg="self",
                        acceleration="none")
    ctl = LiveController(pipe, cache, None, cold, initial={"prompt": "a red fox", "negative_prompt": ""})
    texts = ["a red fox", "", "a red apple", "a green pear"]
    assert ctl.prewarm(texts).wait(30)
    values: dict[str, object] = {"prompt_a": "a red apple", "prompt_b": "a green pear", "prompt_mix": 0.5,
                                 "seed_b": 9, "seed_mix": 0.5, "filter_threshold": 1.0}
    for p in lfos:
        values[lfo_key(p, "depth_norm")] = 0.1
    ctl.submit([SetParams(values)])
    for _ in range(5):
        ctl.tick()
    return ctl, pipe, cache


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        components = load_components(ModelSpec(model=str(make_tiny_model(Path(tmp) / "tiny")), device="cpu",
                                               dtype="float32"))
    enc = PromptEncoder(components.tokenizer, components.text_encoder)
    # the similarity filter would read a similarity on the host: leave it off (threshold 1)
    setups = {"no LFO": [], "1 LFO (guidance)": ["guidance"],
              "8 LFOs": [p for p in LFO_TARGETS if p != "filter_threshold"] + ["filter_threshold"]}
    built = {name: controller(components, enc, lfos) for name, lfos in setups.items()}
    samples: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.rounds):
        for name, (ctl, _, _) in built.items():
            t0 = time.perf_counter()
            for _ in range(args.ticks):
                ctl.tick()
            samples[name].append(1e6 * (time.perf_counter() - t0) / args.ticks)
    ctl, pipe, _ = built["no LFO"]
    frame = torch.rand((1, 3, SIZE, SIZE)) * 2 - 1
    pipe(frame)
    t0 = time.perf_counter()
    for _ in range(20):
        pipe(frame)
    call_us = 1e6 * (time.perf_counter() - t0) / 20
    print(f"tiny random model, {SIZE}x{SIZE}, 2 steps, CPU 1 thread, torch {torch.__version__}; "
          f"{args.rounds} interleaved rounds of {args.ticks} ticks")
    base = statistics.median(samples["no LFO"])
    print(f"{'set-up':<20}{'us/tick':>10}{'x no LFO':>10}")
    for name, xs in samples.items():
        med = statistics.median(xs)
        print(f"{name:<20}{med:>10.1f}{med / base:>10.2f}")
    print(f"{'one stream call':<20}{call_us:>10.1f}{call_us / base:>10.2f}")
    for _, (c, _, cache) in built.items():
        c.close()
        cache.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
