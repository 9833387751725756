"""ControlNets on every backend: ONNX graphs (the ControlNet as its own graph, the U-Net taking
residuals) against torch, cache keys that name the ControlNets, the compiled runner's wiring and
the whole-frame graph's per-active-set capture."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stream_core.controlnet import ControlNetSpec, LoadedControlNet
from stream_core.pipeline import StreamPipeline, StreamSettings
from stream_core.runner import CountingRunner, TorchRunner
from tests.accel.conftest import SIZE, STEPS, T_LIST
from tests.core.controlnet_fixtures import *  # noqa: F403


def _clip(count, seed):
    g = torch.Generator().manual_seed(seed)
    coarse = [torch.rand((1, 3, 4, 4), generator=g) for _ in range(count)]
    return [torch.nn.functional.interpolate(c, size=(SIZE, SIZE), mode="nearest") for c in coarse]


@pytest.fixture(scope="module")
def one_cn(cn_components):
    """The tiny components with ControlNet A only."""
    return dataclasses.replace(cn_components, controlnets=[cn_components.controlnets[0]],
                               info={**cn_components.info, "controlnets": [(cn_components.controlnets[0].spec.model,
                                                                           "none")]})


def _pipe(runner, components, embeds, cfg, units):
    pos, neg = embeds
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=T_LIST, cfg_type=cfg, guidance_scale=1.5, delta=0.9,
                       seed=4)
    return StreamPipeline(runner, components.scheduler, s, pos, neg, controlnets=units)


@pytest.mark.parametrize("cfg", ["self", "full"])
def test_onnxruntime_with_a_controlnet_matches_torch(one_cn, embeds, accel_cache, cfg):
    pytest.importorskip("onnxruntime")
    from stream_core.accel import AccelOptions, build_runner

    units = one_cn.controlnets
    ref = _pipe(TorchRunner(one_cn.unet, one_cn.vae, [u.model for u in units]), one_cn, embeds, cfg, units)
    runner = build_runner(one_cn, "onnxruntime", batch=ref.unet_batch, width=SIZE, height=SIZE, cache_dir=accel_cache,
                          allow_build=True, steps=STEPS, cfg_type=cfg, options=AccelOptions(exporter="torchscript"))
    assert runner.controlnet_count == 1 and {"controlnet0", "unet_res"} <= set(runner.graphs)
    counting = CountingRunner(runner)
    pipe = _pipe(counting, one_cn, embeds, cfg, units)
    for k, (x, c) in enumerate(zip(_clip(4, 1), _clip(4, 2), strict=True)):
        if k == 2:  # a live scale change is a graph input: no new graph, still equal
            for p in (ref, pipe):
                p.set_controlnet(0, scale=0.5)
        a, b = ref(x * 2 - 1, [c]), pipe(x * 2 - 1, [c])
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    assert len(counting.controlnet_calls) == STEPS - 1 + 4
    # the residual graph alone against torch, on fresh inputs
    lat = torch.randn(ref.unet_batch, 4, SIZE // 8, SIZE // 8)
    t = torch.full((ref.unet_batch,), 259, dtype=torch.long)
    text = torch.randn(ref.unet_batch, 77, 32)
    cond = _clip(1, 9)[0].expand(ref.unet_batch, -1, -1, -1)
    scale = torch.tensor(0.7)
    res_ort = runner.controlnet(0, lat, t, text, cond, scale)
    res_torch = ref.runner.controlnet(0, lat, t, text, cond, scale)
    for r1, r2 in zip(res_ort, res_torch, strict=True):
        torch.testing.assert_close(r1, r2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(runner.unet_residuals(lat, t, text, res_torch),
                               ref.runner.unet_residuals(lat, t, text, res_torch), atol=1e-4, rtol=1e-4)


def test_engine_keys_name_the_controlnets(one_cn, cn_components, tiny_components, accel_cache):
    from stream_core.accel.cache import EngineCache, identify
    from stream_core.accel.compile_cache import compile_key
    from stream_core.accel.engines import EngineTarget, StreamShape, control_keys, engine_key

    memo = EngineCache(accel_cache).memo()
    plain, one, three = identify(tiny_components, memo), identify(one_cn, memo), identify(cn_components, memo)
    assert plain.controlnets == () and len(one.controlnets) == 1 and len(three.controlnets) == 3
    assert three.controlnets[0] == three.controlnets[2] != three.controlnets[1]  # same weights, same identity
    target = EngineTarget("onnxruntime", "ort-x", "cpu", "fp32", "cpu")
    shape = StreamShape.for_stream(SIZE, SIZE, STEPS, 1, "self")
    # keys without ControlNets are what they always were (no new field in their digest)
    k_plain = engine_key(plain, target, "unet", shape, (77, 32), "torchscript")
    assert "controlnet" not in k_plain.fields()
    assert control_keys(plain, target, shape, (77, 32), "torchscript") == []
    keys = control_keys(three, target, shape, (77, 32), "torchscript")
    assert [k.component for k in keys] == ["controlnet"] * 3 + ["unet_res"]
    assert keys[0].digest() == keys[2].digest() != keys[1].digest()
    assert keys[0].controlnet == three.controlnets[0]
    [fused] = control_keys(three, target, shape, (77, 32), "torchscript", fused=True)
    [fused_one] = control_keys(one, target, shape, (77, 32), "torchscript", fused=True)
    assert fused.component == "unet_cn" and fused.controlnet == "+".join(three.controlnets)
    assert fused.digest() != fused_one.digest()
    with pytest.raises(ValueError):
        engine_key(three, target, "controlnet", shape, (77, 32), "torchscript", controlnet=3)
    # the compile key changes with the ControlNets and stays as it was without them
    kw = dict(dtype=torch.float32, device=torch.device("cpu"), compile_mode="inductor", cuda_graphs=False,
              channels_last=False)
    c_plain, c_one, c_three = (compile_key(i, shape, **kw) for i in (plain, one, three))
    assert "controlnets" not in c_plain.fields()
    assert len({c_plain.digest(), c_one.digest(), c_three.digest()}) == 3


def test_auto_needs_the_controlnet_graphs_cached_too(one_cn, accel_cache, tmp_path):
    pytest.importorskip("onnxruntime")
    from stream_core.accel import AccelOptions, StreamShape, build_engines
    from stream_core.accel.auto import choose_acceleration

    shape = StreamShape.for_stream(SIZE, SIZE, STEPS, 1, "none")
    opts = AccelOptions(exporter="torchscript")
    build_engines(one_cn, "onnxruntime", shape, tmp_path, which=("unet", "vae_enc", "vae_dec"), options=opts)
    assert choose_acceleration(one_cn, "auto", shape=shape, cache_dir=tmp_path, allow_build=False,
                               options=opts).backend == "onnxruntime"
    for f in (tmp_path / "ort").glob("controlnet-*.json"):
        f.unlink()  # the ControlNet's graph is gone: auto does not pick a runner that cannot run it
    assert choose_acceleration(one_cn, "auto", shape=shape, cache_dir=tmp_path, allow_build=False,
                               options=opts).backend == "none"


def test_compiled_runner_drives_controlnets(one_cn, embeds, monkeypatch):
    """The compile backend's ControlNet and residual calls (torch.compile replaced by the identity:
    inductor takes minutes on this CPU; the CUDA path is exercised by the GPU bench)."""
    from stream_core.accel.compiled import CompiledRunner

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    units = one_cn.controlnets
    runner = CompiledRunner(one_cn.unet, one_cn.vae, compile_mode="inductor", cuda_graphs=False,
                            controlnets=[u.model for u in units])
    assert runner.controlnet_count == 1 and len(compiled) == 5  # unet, enc, dec, controlnet0, unet_res
    ref = _pipe(TorchRunner(one_cn.unet, one_cn.vae, [u.model for u in units]), one_cn, embeds, "initialize", units)
    pipe = _pipe(runner, one_cn, embeds, "initialize", units)
    for x, c in zip(_clip(3, 3), _clip(3, 4), strict=True):
        torch.testing.assert_close(pipe(x * 2 - 1, [c]), ref(x * 2 - 1, [c]), atol=1e-5, rtol=0)


def test_frame_graph_body_keys_on_the_active_controlnets(cn_components, embeds):
    """The whole-frame path (eager body here; captured per active set on CUDA) gives the pipeline's
    frames with ControlNets, and follows live on/off changes."""
    from stream_core.accel.frame_graph import FrameGraph, pipeline_tensors
    from stream_core.engine import pack_rgb

    units = [LoadedControlNet(ControlNetSpec(u.spec.model, 0.8), u.model) for u in cn_components.controlnets[:2]]
    models = [u.model for u in units]
    ref = _pipe(TorchRunner(cn_components.unet, cn_components.vae, models), cn_components, embeds, "self", units)
    pipe = _pipe(TorchRunner(cn_components.unet, cn_components.vae, models), cn_components, embeds, "self", units)
    fg = FrameGraph(pipe, capture=False)
    assert {"_cn_rows[0]", "_cn_rows[1]", "_cn_new[0]", "_cn_scale[1]"} <= set(pipeline_tensors(pipe))
    for k, (x, c) in enumerate(zip(_clip(4, 5), _clip(4, 6), strict=True)):
        if k == 2:
            for p in (ref, pipe):
                p.set_controlnet(1, enabled=False)
        packed, _ = fg(x * 2 - 1, [c, None])
        assert torch.equal(packed, pack_rgb(ref(x * 2 - 1, [c, None])))
        assert fg._key == pipe.controlnet_active
    assert fg._key == (0,)


def test_gpu_bench_controlnet_mode_runs_on_the_cpu(tmp_path):
    """bench/gpu.py's ControlNet mode must not rot between GPU runs (tiny arch, 64 px, CPU)."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("bench_gpu_cn", root / "bench" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    saved = []
    report = gpu.controlnet_bench("cpu", arch="tiny", size=64, variants=("eager", "graphs"), budget_s=120,
                                  timing={"warmup": 1, "frames": 1, "rounds": 1},
                                  save=lambda r: saved.append(json.dumps(r, default=str)))
    rows = {(r["scenario"], r["variant"]): r for r in report["results"]}
    assert set(rows) == {(s, v) for s in gpu.CN_SCENARIOS for v in ("eager", "graphs")}
    for scen in gpu.CN_SCENARIOS:
        eager = rows[(scen, "eager")]
        assert eager["fps_plain"] > 0 and eager["fps_controlnet"] > 0
        assert eager["cost_ratio"] == pytest.approx(eager["ms_controlnet"] / eager["ms_plain"], rel=1e-2)
        assert rows[(scen, "graphs")]["skipped"] == "graphs needs CUDA"
    assert report["controlnet_params"] > 0 and len(saved) == 2


def test_tensorrt_graphs_with_a_controlnet_match_torch(one_cn, embeds, tmp_path, monkeypatch):
    """The TensorRT runner's side (engines with many outputs bound once, the residual U-Net) against
    FakeTensorRT (tests/accel/fake_tensorrt.py: the TensorRT API over onnxruntime) on the CPU."""
    pytest.importorskip("onnxruntime")
    import sys
    import types

    from stream_core.accel import AccelOptions, StreamShape, build_engines
    from stream_core.accel import tensorrt_backend as trt_backend
    from stream_core.accel.graph_runner import GraphRunner
    from tests.accel.fake_tensorrt import FakeTensorRT

    shape = StreamShape.for_stream(SIZE, SIZE, STEPS, 1, "self")
    done = build_engines(one_cn, "onnxruntime", shape, tmp_path, which=("unet", "vae_enc", "vae_dec"),
                         options=AccelOptions(exporter="torchscript"))
    onnx = {e.key.component: e.main for e, _ in done}
    assert set(onnx) == {"unet", "vae_enc", "vae_dec", "controlnet", "unet_res"}
    fake = FakeTensorRT(version=11)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_backend, "require_cuda", lambda *a: torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (40 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: types.SimpleNamespace(cuda_stream=7))
    graphs = {c: trt_backend.TrtGraph(trt_backend.build_engine(p, label=f"TensorRT {c}"), name=c,
                                      use_cuda_graph=False) for c, p in onnx.items()}
    assert set(graphs["controlnet"].outputs) == {f"res_{i}" for i in range(len(graphs["controlnet"].outputs))}
    runner = GraphRunner(graphs["unet"], graphs["vae_enc"], graphs["vae_dec"], device=torch.device("cpu"),
                         dtype=torch.float32, backend="tensorrt", controlnets=[graphs["controlnet"]],
                         unet_res=graphs["unet_res"])
    units = one_cn.controlnets
    ref = _pipe(TorchRunner(one_cn.unet, one_cn.vae, [u.model for u in units]), one_cn, embeds, "self", units)
    pipe = _pipe(runner, one_cn, embeds, "self", units)
    for k, (x, c) in enumerate(zip(_clip(3, 7), _clip(3, 8), strict=True)):
        if k == 1:
            for p in (ref, pipe):
                p.set_controlnet(0, scale=1.4)
        torch.testing.assert_close(pipe(x * 2 - 1, [c]), ref(x * 2 - 1, [c]), atol=1e-4, rtol=0)


def test_onnxruntime_with_controlnets_inside_the_unet_graph(cn_components, embeds, tmp_path):
    """``controlnet_graph: unet``: both ControlNets inside one U-Net graph; one turned off runs at
    scale 0 inside it; none active runs the plain U-Net graph. Same frames as torch."""
    pytest.importorskip("onnxruntime")
    from stream_core.accel import AccelOptions, build_runner

    two = dataclasses.replace(cn_components, controlnets=cn_components.controlnets[:2])
    units = [LoadedControlNet(ControlNetSpec(u.spec.model, s), u.model) for u, s in zip(two.controlnets, (0.9, 0.6),
                                                                                        strict=True)]
    two = dataclasses.replace(two, controlnets=units)
    ref = _pipe(TorchRunner(two.unet, two.vae, [u.model for u in units]), two, embeds, "initialize", units)
    runner = build_runner(two, "onnxruntime", batch=ref.unet_batch, width=SIZE, height=SIZE, cache_dir=tmp_path,
                          allow_build=True, steps=STEPS, cfg_type="initialize",
                          options=AccelOptions(exporter="torchscript", controlnet_graph="unet"))
    assert set(runner.graphs) == {"unet", "vae_enc", "vae_dec", "unet_cn"} and runner.controlnet_count == 2
    counting = CountingRunner(runner)
    pipe = _pipe(counting, two, embeds, "initialize", units)
    for k, (x, c) in enumerate(zip(_clip(5, 11), _clip(5, 12), strict=True)):
        if k == 2:
            for p in (ref, pipe):
                p.set_controlnet(1, enabled=False)
        if k == 4:
            for p in (ref, pipe):
                p.set_controlnet(0, scale=0.0)
        torch.testing.assert_close(pipe(x * 2 - 1, [c, None]), ref(x * 2 - 1, [c, None]), atol=1e-4, rtol=0)
    # calls 0-2 (priming + 2 frames): both; 3-4: ControlNet 0 only; the last: the plain U-Net graph
    assert [k for k, _ in counting.controlnet_calls] == [0, 1] * 3 + [0, 0]
    assert len(counting.unet_batches) == STEPS - 1 + 5
