"""Static shapes: live settings of the bank change tensor values only, so torch.compile (inductor,
on the CPU) compiles once and an ONNX export of the U-Net with the bank as inputs serves every
setting; device discipline on the ``meta`` device (no host synchronisation, nothing off-device)."""

from __future__ import annotations

import copy

import pytest
import torch

from stream_core.temporal import TemporalUNetGraph
from tests.temporal.conftest import clip


def _layer(pipe, i=0):
    bank = pipe.temporal
    return dict(pipe.runner.unet_model.named_modules())[bank.names[i][: -len(".processor")]]


def test_live_settings_need_no_recompile_under_inductor(make):
    import torch._dynamo as dynamo

    pipe = make(temporal_max_frames=2, temporal_static=True)
    bank = pipe.temporal
    for k in range(3):
        pipe(clip(k))  # a filled ring with distinct frames
    attn = _layer(pipe)
    hidden = torch.randn((3, bank.keys[0].shape[2], attn.to_q.in_features), generator=torch.Generator().manual_seed(5))
    dynamo.reset()
    compiled = torch.compile(attn, backend="inductor", dynamic=False)
    settings = [
        lambda: None,
        lambda: bank.set_cache(False),
        lambda: (bank.set_cache(True), bank.set_frames(1)),
        lambda: bank.set_injection(0.6),
        lambda: (bank.set_frames(2), bank.set_injection(0.0)),
    ]
    frames_compiled = []
    with torch.no_grad():
        for change in settings:
            change()
            bank.begin_frame()
            bank.begin_call(0, 3, 0)
            want = attn(hidden)
            bank.begin_call(0, 3, 0)
            got = compiled(hidden)
            bank._call = None
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            frames_compiled.append(dynamo.utils.counters["stats"]["unique_graphs"])
    assert frames_compiled[0] >= 1
    assert frames_compiled == [frames_compiled[0]] * len(settings), "a live setting recompiled"
    dynamo.reset()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@torch.no_grad()
def test_onnx_export_takes_the_bank_as_inputs_for_every_setting(make, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pipe = make(temporal_max_frames=2, temporal_static=True, steps=(32, 45))
    bank = pipe.temporal
    for k in range(3):
        pipe(clip(k))
    unet = pipe.runner.unet_model
    graph = TemporalUNetGraph(unet, bank).eval()
    rows = bank.rows
    c, h, w = pipe.latent_shape
    g = torch.Generator().manual_seed(6)
    latents = torch.randn((rows, c, h, w), generator=g)
    timesteps = pipe._t_rows.to(torch.float32)
    text = pipe._text_batch
    bank.begin_frame()

    def inputs():
        return (latents, timesteps, text, bank._attn_bias.clone(), bank._inj_bias.clone(),
                bank._inj_scale.clone(), *[t.clone() for t in graph.example_bank()])

    path = tmp_path / "unet_temporal.onnx"
    n = len(bank.names)
    names = ["latents", "timesteps", "text_embeds", "attn_bias", "inj_bias", "strength"] + [
        f"{kind}_{i}" for kind in ("bank_k", "bank_v", "bank_o") for i in range(n)]
    outs = ["eps"] + [f"{kind}_{i}" for kind in ("new_k", "new_v", "new_o") for i in range(n)]
    torch.onnx.export(graph, inputs(), str(path), input_names=names, output_names=outs, opset_version=18,
                      dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for change in (lambda: None, lambda: bank.set_cache(False), lambda: bank.set_injection(0.5),
                   lambda: (bank.set_cache(True), bank.set_frames(1))):
        change()
        bank.begin_frame()
        args = inputs()
        want = graph(*args)
        got = sess.run(None, {k: v.numpy() for k, v in zip(names, args, strict=True)})
        assert len(got) == len(want) == 1 + 3 * n
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(torch.from_numpy(a), b, rtol=1e-3, atol=1e-4)
    # the bank's shapes are the graph's: they never change with the settings
    assert [tuple(i.shape) for i in sess.get_inputs()[6:]] == [tuple(t.shape) for t in graph.example_bank()]


@pytest.mark.parametrize("static", [False, True])
def test_bank_stays_on_the_pipeline_device_and_dtype_on_meta(tiny_components, enc, static):
    from stream_core.pipeline import StreamPipeline, StreamSettings
    from stream_core.runner import TorchRunner

    unet = copy.deepcopy(tiny_components.unet).to("meta", torch.float16)
    vae = copy.deepcopy(tiny_components.vae).to("meta", torch.float16)
    s = StreamSettings(width=64, height=64, t_index_list=(20, 32, 45), cfg_type="full", seed=4,
                       temporal_max_frames=2, temporal_injection=0.5, temporal_static=static,
                       latent_feedback=0.3, temporal_interval=2)
    pipe = StreamPipeline(TorchRunner(unet, vae), tiny_components.scheduler, s, enc.encode("a fox"), enc.encode(""))
    frame = torch.empty((1, 3, 64, 64), device="meta", dtype=torch.float16)
    for k in range(3):  # .item() / bool(tensor) on meta raise: no host sync on the per-frame path
        out = pipe(frame)
        if k == 1:
            pipe.set_temporal_frames(1)
            pipe.set_temporal_cache(False)
            pipe.set_latent_feedback(0.1)
    assert (out.device.type, out.dtype) == ("meta", torch.float16)
    for name, t in pipe.temporal.tensors().items():
        assert t.device.type == "meta", name
        if t.is_floating_point():
            assert t.dtype == torch.float16, name
    assert (pipe._fb_prev.device.type, pipe._fb_prev.dtype) == ("meta", torch.float16)


def test_runners_without_the_eager_unet_are_refused(tiny_components, enc):
    from stream_core.pipeline import RebuildRequired, StreamPipeline, StreamSettings
    from stream_core.runner import CountingRunner, TorchRunner

    unet = copy.deepcopy(tiny_components.unet)
    s = StreamSettings(width=64, height=64, t_index_list=(32, 45), temporal_max_frames=1)
    counted = StreamPipeline(CountingRunner(TorchRunner(unet, tiny_components.vae)), tiny_components.scheduler, s,
                             enc.encode("a fox"))
    assert counted.temporal is not None

    class Compiled:  # like CompiledRunner: an eager base whose U-Net was captured before the bank
        def __init__(self) -> None:
            self.base = TorchRunner(copy.deepcopy(tiny_components.unet), tiny_components.vae)
            self.unet_model = self.base.unet_model
            self.device, self.dtype = self.base.device, self.base.dtype

    with pytest.raises(RebuildRequired, match="acceleration none"):
        StreamPipeline(Compiled(), tiny_components.scheduler, s, enc.encode("a fox"))


def test_whole_frame_graph_switches_the_bank_to_static_and_snapshots_it(make):
    from stream_core.accel.frame_graph import FrameGraph, pipeline_tensors, restore, snapshot

    pipe = make(temporal_max_frames=2)
    graph = FrameGraph(pipe, capture=False)
    assert pipe.temporal.static
    for k in range(3):
        graph(clip(k))
    names = pipeline_tensors(pipe)
    assert "temporal.keys.0" in names and "temporal._ptr" in names
    saved = snapshot(pipe)
    ring = pipe.temporal.keys[0]
    graph(clip(3))
    assert not torch.equal(ring, saved["temporal.keys.0"])
    restore(pipe, saved)
    assert pipe.temporal.keys[0] is ring and torch.equal(ring, saved["temporal.keys.0"])
    assert int(pipe.temporal._ptr) == int(saved["temporal._ptr"])
