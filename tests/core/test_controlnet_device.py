"""ControlNet state and calls stay on the pipeline's device and dtype, with no host sync per frame:
the pipeline runs on the ``meta`` device in float16 (see ``devguard``) with two ControlNets, one of
them through the depth preprocessor."""

from __future__ import annotations

import torch
from diffusers import LCMScheduler

from stream_core.controlnet import ControlNetSpec, DepthEstimator, LoadedControlNet
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.tiny import SCHEDULER_CONFIG
from tests.core.devguard import DeviceGuard, ShapeRunner, tensors_of

SIZE = 64


class ControlShapeRunner(ShapeRunner):
    """ShapeRunner with ControlNet calls: checks their inputs, returns shape-correct residuals."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.controlnet_count = count
        self.cn_calls: list[tuple[int, int]] = []

    def controlnet(self, index, latents, timesteps, text_embeds, cond, scale):
        self._check("controlnet latents", latents, self.dtype)
        self._check("control image", cond, self.dtype)
        self._check("controlnet text", text_embeds, self.dtype)
        self._check("controlnet scale", scale, torch.float32)
        if scale.dim() != 0:
            self.problems.append(f"scale is shaped {tuple(scale.shape)}")
        if cond.shape != (latents.shape[0], 3, SIZE, SIZE):
            self.problems.append(f"control image {tuple(cond.shape)} for batch {latents.shape[0]}")
        self.cn_calls.append((index, int(latents.shape[0])))
        pooled = torch.nn.functional.avg_pool2d(cond, 8)
        return [latents * scale + pooled.mean(dim=1, keepdim=True), latents[:, :1] * scale]

    def unet_residuals(self, latents, timesteps, text_embeds, residuals):
        for r in residuals:
            self._check("residual", r, self.dtype)
        return self.unet(latents, timesteps, text_embeds) + residuals[0] + residuals[1].mean()


class _Out:
    def __init__(self, depth):
        self.predicted_depth = depth


class FakeDepth(torch.nn.Module):
    """A depth model's interface on any device: ``pixel_values`` -> ``.predicted_depth`` (B, h, w)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, pixel_values):
        return _Out(self.conv(pixel_values)[:, 0])


def embed(seed: int) -> torch.Tensor:
    return torch.randn((1, 77, 32), generator=torch.Generator().manual_seed(seed))


def meta_pipe(cfg: str, denoising_batch: bool = True) -> StreamPipeline:
    depth = DepthEstimator(FakeDepth().to("meta", torch.float16), (0.5,) * 3, (0.5,) * 3, (32, 32))
    units = [LoadedControlNet(ControlNetSpec("a/cn", 0.8), object()),
             LoadedControlNet(ControlNetSpec("a/cn", 1.0, "depth", depth_model="a/depth"), object(), depth)]
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(16, 32, 45), cfg_type=cfg, frame_buffer_size=2,
                       seed=3, denoising_batch=denoising_batch)
    return StreamPipeline(ControlShapeRunner(2), LCMScheduler.from_config(SCHEDULER_CONFIG), s, embed(0), embed(1),
                          controlnets=units)


def test_controlnet_frames_and_live_changes_stay_on_the_device():
    for cfg in ("none", "full", "self", "initialize"):
        for denoising_batch in (True, False):
            pipe = meta_pipe(cfg, denoising_batch)
            frame = torch.empty((2, 3, SIZE, SIZE), device="meta", dtype=torch.float16)
            control = torch.empty((2, 3, 48, 80), device="meta", dtype=torch.float16)  # any size
            guard = DeviceGuard()
            with guard:
                pipe(frame, [control, None])
                pipe.set_controlnet(0, scale=0.3)
                pipe.set_controlnet(1, enabled=False)
                pipe(frame, [control, None])
                pipe.set_controlnet(1, enabled=True)
                pipe.set_controlnet(0, scale=0.0)
                pipe(frame, [None, control])
                pipe.reset()
                pipe(frame)
            assert guard.violations == [], (cfg, guard.violations)
            assert pipe.runner.problems == [], (cfg, pipe.runner.problems)
            for name, t in tensors_of(pipe).items():
                assert t.device.type == "meta", f"{name} is on {t.device}"
            for t in (*pipe._cn_rows, *pipe._cn_new):
                assert t.dtype == torch.float16
            assert all(s.dtype == torch.float32 and s.dim() == 0 for s in pipe._cn_scale)
            # one call per active ControlNet per U-Net evaluation, on the whole batch
            batches = set(pipe.runner.unet_batches)
            assert {b for _, b in pipe.runner.cn_calls} <= batches
            if denoising_batch:
                assert batches == {pipe.unet_batch}


def test_control_rows_are_static_buffers():
    """What a captured frame reads keeps its storage across calls and live changes."""
    pipe = meta_pipe("initialize")
    frame = torch.empty((2, 3, SIZE, SIZE), device="meta", dtype=torch.float16)
    pipe(frame)
    before = {k: t for k, t in tensors_of(pipe).items() if k.startswith(("_cn_rows", "_cn_new", "_cn_scale"))}
    assert len(before) == 6
    pipe(frame)
    pipe.set_controlnet(0, scale=1.7)
    pipe.set_controlnet(1, enabled=False)
    pipe.set_controlnet(1, enabled=True)
    pipe(frame)
    pipe.reset()
    after = tensors_of(pipe)
    for k, t in before.items():
        assert after[k] is t
