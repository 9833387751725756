"""Whole-frame capture (encode -> step maths -> decode -> packing): the body and its bookkeeping on
the CPU (``capture=False``), the CUDA graph itself where a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stream_core.accel.errors import BackendUnavailableError
from stream_core.engine import StreamEngine, pack_rgb
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.runner import TorchRunner
from tests.accel.conftest import SIZE

pytestmark = pytest.mark.skipif(not hasattr(StreamPipeline, "denoise"),
                                reason="needs the pipeline's static hot path (StreamPipeline.denoise)")


def _settings(**kw):
    return StreamSettings(width=SIZE, height=SIZE, t_index_list=(20, 32, 45), cfg_type="self", seed=2, **kw)


def _frames(k: int) -> torch.Tensor:
    return torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(k)) * 2 - 1


def _pipe(components, embeds):
    return StreamPipeline(TorchRunner(components.unet, components.vae), components.scheduler, _settings(), embeds[0])


def test_frame_body_equals_the_pipeline_packed(tiny_components, embeds):
    from stream_core.accel.frame_graph import FrameGraph

    ref, pipe = _pipe(tiny_components, embeds), _pipe(tiny_components, embeds)
    fg = FrameGraph(pipe, capture=False)
    for k in range(5):
        packed, finite = fg(_frames(k))
        torch.testing.assert_close(packed, pack_rgb(ref(_frames(k))), atol=1, rtol=0)
        assert bool(finite)
    assert pipe.calls == 5


def test_warm_up_calls_are_undone(tiny_components, embeds):
    """Capture warms up with real calls; restoring the snapshot leaves the stream exactly as before."""
    from stream_core.accel.frame_graph import FrameGraph, restore, snapshot

    ref, pipe = _pipe(tiny_components, embeds), _pipe(tiny_components, embeds)
    fg = FrameGraph(pipe, capture=False)
    for k in range(3):
        fg(_frames(k))
        ref(_frames(k))
    saved = snapshot(pipe)
    for _ in range(2):
        fg._body(_frames(99))  # what a capture's warm-up does
    restore(pipe, saved)
    for k in range(3, 6):
        torch.testing.assert_close(fg(_frames(k))[0], pack_rgb(ref(_frames(k))), atol=1, rtol=0)


def test_refusals(tiny_components, embeds):
    from stream_core.accel.frame_graph import FrameGraph

    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="CUDA GPU"):
            FrameGraph(_pipe(tiny_components, embeds), capture=True)
    seq = StreamPipeline(TorchRunner(tiny_components.unet, tiny_components.vae), tiny_components.scheduler,
                         _settings(denoising_batch=False), embeds[0])
    with pytest.raises(ValueError, match="denoising_batch"):
        FrameGraph(seq, capture=False)


def test_engine_frame_graph_off_cuda_is_an_error_not_a_fallback(tiny_components):
    if torch.cuda.is_available():
        pytest.skip("on CUDA the engine captures; see the cuda test")
    with pytest.raises(BackendUnavailableError, match="CUDA GPU"):
        StreamEngine(tiny_components, _settings(), "x", frame_graph=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_captured_frame_equals_eager_on_cuda(tiny_model_dir):
    from stream_core.models import ModelSpec, load_components

    comps = load_components(ModelSpec(model=str(tiny_model_dir), device="cuda", dtype="float16"))
    eager = StreamEngine(comps, _settings(), "a city")
    graph = StreamEngine(comps, _settings(), "a city", frame_graph=True)
    rng = np.random.default_rng(0)
    for _ in range(6):
        frame = rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
        a, b = eager.process(frame), graph.process(frame)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    assert graph._frame_graph.graph is not None and graph.output_finite is True
