"""The stochastic similarity filter's skip rate follows p = max(0, (s - thr) / (1 - thr))."""

from __future__ import annotations

import pytest
import torch

from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.prompts import PromptEncoder
from stream_core.runner import CountingRunner, TorchRunner
from stream_core.similarity import SimilarityFilter


def pair_with_similarity(s: float, dim: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, generator=g)
    a /= a.norm()
    r = torch.randn(dim, generator=g)
    r -= (r @ a) * a
    r /= r.norm()
    b = s * a + (1 - s * s) ** 0.5 * r
    return a, b


@pytest.mark.parametrize("sim,thr", [(0.995, 0.98), (0.99, 0.98), (0.97, 0.98), (0.96, 0.9)])
def test_skip_rate_follows_formula(sim, thr):
    a, b = pair_with_similarity(sim)
    f = SimilarityFilter(threshold=thr, max_skip=10**9, seed=123)
    assert f.should_skip(a) is False  # first frame is the reference
    trials = 4000
    skips = 0
    for _ in range(trials):
        # always offer the vector that is NOT the current reference: every comparison has s = sim
        other = b if torch.equal(f._ref, a) else a
        skips += f.should_skip(other)
    p = max(0.0, (sim - thr) / (1 - thr))
    assert f.last_similarity == pytest.approx(sim, abs=1e-4)
    # binomial: 4 standard deviations
    sd = (p * (1 - p) / trials) ** 0.5
    assert abs(skips / trials - p) <= 4 * sd + 1e-9


def test_max_skip_forces_processing():
    a, _ = pair_with_similarity(0.5)
    f = SimilarityFilter(threshold=0.5, max_skip=3, seed=1)
    f.should_skip(a)
    decisions = [f.should_skip(a) for _ in range(8)]  # identical frames: p = 1
    assert decisions == [True, True, True, False, True, True, True, False]


def test_disabled_at_threshold_one():
    a, _ = pair_with_similarity(0.5)
    f = SimilarityFilter(threshold=1.0)
    assert not any(f.should_skip(a) for _ in range(20))


def test_same_seed_same_decisions():
    a, b = pair_with_similarity(0.99)
    runs = []
    for _ in range(2):
        f = SimilarityFilter(threshold=0.98, max_skip=100, seed=9)
        f.should_skip(a)
        runs.append([f.should_skip(b) for _ in range(200)])
    assert runs[0] == runs[1]


def test_pipeline_skip_reuses_output_and_saves_unet_calls(tiny_components):
    enc = PromptEncoder(tiny_components.tokenizer, tiny_components.text_encoder)
    runner = CountingRunner(TorchRunner(tiny_components.unet, tiny_components.vae))
    s = StreamSettings(width=64, height=64, t_index_list=(32, 45), filter_threshold=0.9, filter_max_skip=4, filter_seed=3)
    pipe = StreamPipeline(runner, tiny_components.scheduler, s, enc.encode("x"), enc.encode(""))
    still = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1
    first = pipe(still)
    calls_after_first = len(runner.unet_batches)
    outs, skipped = [], 0
    for _ in range(10):
        outs.append(pipe(still))
        skipped += pipe.last_skipped
    # identical input: p = 1, so 4 skips then one forced process, repeated
    assert skipped == 8
    assert len(runner.unet_batches) == calls_after_first + 2
    assert torch.equal(outs[0], first)
