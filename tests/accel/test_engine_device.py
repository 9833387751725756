"""StreamEngine's device-side output: packing, dry/wet mix, the finiteness flag, the async hand-off."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from stream_core.engine import PendingFrame, StreamEngine, mix_rgb, pack_rgb, tensor_to_rgb
from stream_core.pipeline import StreamSettings
from stream_core.runner import TorchRunner
from tests.accel.conftest import SIZE


def _frames(seed: int, f: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (f, SIZE, SIZE, 3), dtype=np.uint8)


def test_pack_equals_the_cpu_formula():
    x = torch.randn(2, 3, 8, 8) * 1.5
    x[0, 0, 0, 0] = 1.0
    x[0, 0, 0, 1] = -1.0
    ref = ((np.clip(x.numpy(), -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
    got = pack_rgb(x)
    assert got.dtype == torch.uint8 and got.shape == (2, 8, 8, 3) and got.is_contiguous()
    np.testing.assert_array_equal(got.numpy(), ref)
    np.testing.assert_array_equal(tensor_to_rgb(x), ref)


@pytest.mark.parametrize("mix", [0.0, 0.25, 0.5, 0.731, 1.0])
def test_mix_equals_cv2_add_weighted(mix):
    rng = np.random.default_rng(3)
    dry = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    wet = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    ref = np.stack([cv2.addWeighted(wet[j], mix, dry[j], 1.0 - mix, 0.0) for j in range(2)])
    got = mix_rgb(torch.from_numpy(dry), torch.from_numpy(wet), mix).numpy()
    diff = np.abs(got.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float rounding at exact .5 only


@pytest.fixture
def engine(tiny_components):
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(32, 45), cfg_type="self", seed=2)
    return StreamEngine(tiny_components, s, "a neon city at night")


def test_process_with_mix_blends_on_the_device_like_the_cpu(engine, tiny_components):
    frame = _frames(1)
    s = engine.settings
    twin = StreamEngine(tiny_components, s, "a neon city at night")
    wet = twin.process(frame)
    mixed = engine.process(frame, mix=0.4)
    ref = cv2.addWeighted(wet[0], 0.4, frame[0], 0.6, 0.0)
    assert np.abs(mixed[0].astype(int) - ref.astype(int)).max() <= 1
    assert engine.process(frame, mix=1.0).shape == (1, SIZE, SIZE, 3)


def test_bad_mix_is_refused_and_changes_nothing(engine):
    with pytest.raises(ValueError, match="mix should be within 0..1"):
        engine.process(_frames(1), mix=1.5)
    with pytest.raises(ValueError, match="txt2img"):
        engine.process(None, mix=0.5)


class NanDecoder(TorchRunner):
    poison = False

    def decode(self, latents):
        out = super().decode(latents)
        if self.poison:
            out = out.clone()
            out[0, 0, 0, 0] = float("nan")
        return out


def test_output_finite_tracks_the_output(tiny_components):
    runner = NanDecoder(tiny_components.unet, tiny_components.vae)
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(32, 45), cfg_type="self", seed=2)
    engine = StreamEngine(tiny_components, s, "x", runner=runner)
    assert engine.output_finite is None
    engine.process(_frames(1))
    assert engine.output_finite is True
    runner.poison = True
    engine.process(_frames(2))
    assert engine.output_finite is False
    runner.poison = False
    engine.process(_frames(3))
    assert engine.output_finite is True


def test_process_async_hands_over_a_pending_frame(engine):
    pending = engine.process_async(_frames(1))
    assert isinstance(pending, PendingFrame)
    assert pending.ready()  # on the CPU the frame is there at once
    out = pending.result()
    assert out.shape == (1, SIZE, SIZE, 3) and out.dtype == np.uint8 and pending.finite is True
    assert engine.acceleration_info["backend"] == "none"


@pytest.mark.skipif(not hasattr(__import__("stream_core.pipeline").pipeline.StreamPipeline, "denoise"),
                    reason="needs the pipeline's device discipline (it runs on the meta device)")
def test_upload_pack_mix_and_flag_stay_on_the_model_device(tiny_components):
    """On the meta device any tensor made on the CPU by mistake fails or shows: everything between
    the upload and the download (unpack, pipeline, finiteness, packing, mix) stays on the device."""
    import copy
    import types

    meta = types.SimpleNamespace(tokenizer=tiny_components.tokenizer, scheduler=tiny_components.scheduler,
                                 info=tiny_components.info, device=torch.device("meta"), dtype=torch.float32)
    for name in ("unet", "vae", "text_encoder"):
        setattr(meta, name, copy.deepcopy(getattr(tiny_components, name)).to("meta"))
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(32, 45), cfg_type="self", seed=2)
    engine = StreamEngine(meta, s, "a city")
    handed: list[tuple[torch.Tensor, torch.Tensor]] = []
    engine._download = lambda packed, finite: handed.append((packed, finite))
    engine.process_async(_frames(1), mix=0.5)
    engine.process_async(_frames(2))
    for packed, finite in handed:
        assert packed.device.type == "meta" and packed.dtype == torch.uint8 and packed.shape == (1, SIZE, SIZE, 3)
        assert finite.device.type == "meta" and finite.dtype == torch.bool
