"""The TensorRT backend's code against FakeTensorRT (tests/accel/fake_tensorrt.py), on the CPU.

FakeTensorRT is not TensorRT: it follows the documented TensorRT 10/11 Python API and runs the
ONNX graph with onnxruntime, reading and writing the raw addresses the runner binds. These tests
check our side of the contract (build flags per TensorRT version, workspace, progress monitor,
parse/build failures, static shapes, buffers bound once, the stream handle, outputs read from the
bound buffers). What TensorRT itself does with a real GPU is tested by tests/accel/test_gpu.py,
which runs only where CUDA and TensorRT are present.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from stream_core.accel import tensorrt_backend as trt_backend
from stream_core.accel.errors import EngineBuildError
from stream_core.accel.export import graph_specs, torch_reference
from tests.accel.conftest import SIZE, STEPS, T_LIST
from tests.accel.fake_tensorrt import FakeTensorRT, onnx_with_dynamic_input

pytest.importorskip("onnxruntime")

GIB = 1 << 30
STREAM = 0xC0FFEE


@pytest.fixture(params=[11, 10], ids=["trt11", "trt10"])
def fake_trt(request, monkeypatch):
    fake = FakeTensorRT(version=request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_backend, "require_cuda", lambda *a: torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (40 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: types.SimpleNamespace(cuda_stream=STREAM))
    return fake


def _plan(fake, path, **kw):
    return trt_backend.build_engine(path, label="TensorRT unet", **kw)


def test_build_flags_follow_the_tensorrt_version(fake_trt, ort_engines, caplog):
    unet = ort_engines["self"]["unet"].main
    with caplog.at_level("INFO", logger="stream_core.accel.tensorrt_backend"):
        plan = _plan(fake_trt, unet, workspace=2 * GIB, optimization_level=5)
    assert isinstance(plan, bytes) and plan
    [(_, flags)] = [c for c in fake_trt.calls if c[0] == "create_network"]
    [config] = fake_trt.configs
    if fake_trt.__version__.startswith("11"):
        # TensorRT 11 has no BuilderFlag.FP16: the network is strongly typed, precision from the graph
        assert flags == 1 << int(fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        assert config.flags == set()
    else:
        assert flags == 0 and config.flags == {fake_trt.BuilderFlag.FP16}
    assert config.pool_limits == {fake_trt.MemoryPoolType.WORKSPACE: 2 * GIB}
    assert config.builder_optimization_level == 5
    assert config.progress_monitor.fake_initialised  # the base class's __init__ ran
    text = caplog.text
    assert "TensorRT unet: Building engine (2 steps)" in text and "Tactic timing (3 steps)" in text
    assert "TensorRT build: 40.0 GiB VRAM free of 80.0 GiB, workspace 2.0 GiB" in text


def test_parse_and_build_failures_are_clear_errors(fake_trt, ort_engines, tmp_path):
    bad = tmp_path / "graph.onnx"
    bad.write_bytes(b"\x00not an onnx graph")
    with pytest.raises(EngineBuildError, match="TensorRT cannot parse graph.onnx: ModelImporter"):
        _plan(fake_trt, bad)
    fake_trt.fail_build = True
    with pytest.raises(EngineBuildError, match="TensorRT failed to build the TensorRT unet engine"):
        _plan(fake_trt, ort_engines["self"]["unet"].main)


def test_dynamic_input_shapes_are_refused_before_building(fake_trt, tmp_path):
    path = onnx_with_dynamic_input(tmp_path / "dyn.onnx")
    with pytest.raises(EngineBuildError, match=r"input latents has a dynamic shape \(-1, 4, 8, 8\)"):
        _plan(fake_trt, path)
    assert fake_trt.configs == []  # stopped before any builder config


def test_no_build_without_the_free_vram(fake_trt, ort_engines, monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (GIB // 2, 24 * GIB))
    with pytest.raises(EngineBuildError, match="not enough free GPU memory to build"):
        _plan(fake_trt, ort_engines["self"]["unet"].main)
    assert not any(c[0] == "create_network" for c in fake_trt.calls)


def test_engine_binds_its_buffers_once_and_reads_outputs_from_them(fake_trt, ort_engines, tiny_components):
    plan = _plan(fake_trt, ort_engines["self"]["unet"].main)
    graph = trt_backend.TrtGraph(plan, name="unet", use_cuda_graph=False)
    assert set(graph.inputs) == {"latents", "timesteps", "text_embeds"} and set(graph.outputs) == {"eps"}
    bound = {c[1]: c[2] for c in fake_trt.calls if c[0] == "set_tensor_address"}
    assert bound == {n: t.data_ptr() for n, t in {**graph.inputs, **graph.outputs}.items()}
    assert {c[1] for c in fake_trt.calls if c[0] == "set_input_shape"} == set(graph.inputs)
    assert graph.inputs["timesteps"].dtype == torch.float32  # exported as float (see export.py)

    spec = graph_specs(tiny_components, batch=STEPS, frame_buffer=1, width=SIZE, height=SIZE)["unet"]
    n_bind = len(fake_trt.calls)
    results = []
    for seed in (1, 2):
        latents, timesteps, text = spec.example_inputs(torch.device("cpu"), torch.float32, seed=seed)
        ref = torch_reference(tiny_components, spec, (latents, timesteps, text))
        out = graph.run({"latents": latents, "timesteps": timesteps.long(), "text_embeds": text})["eps"]
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
        results.append(out.clone())
    assert not torch.equal(results[0], results[1])
    later = fake_trt.calls[n_bind:]
    assert later == [("execute_async_v3", STREAM)] * 2  # nothing rebound, on torch's current stream


def test_wrong_input_shape_names_the_engine_shape(fake_trt, ort_engines):
    graph = trt_backend.TrtGraph(_plan(fake_trt, ort_engines["self"]["vae_dec"].main), name="vae_dec",
                                 use_cuda_graph=False)
    with pytest.raises(ValueError, match=r"shaped \(2, 4, 8, 8\) but the engine was built for \(1, 4, 8, 8\)"):
        graph.run({"latents": torch.zeros(2, 4, SIZE // 8, SIZE // 8)})


def test_unreadable_plan_says_rebuild(fake_trt):
    with pytest.raises(EngineBuildError, match="could not load the unet engine.*streambridge engines build"):
        trt_backend.TrtGraph(b"an engine from another TensorRT", name="unet")


def test_failed_execution_is_an_error(fake_trt, ort_engines):
    graph = trt_backend.TrtGraph(_plan(fake_trt, ort_engines["self"]["vae_dec"].main), name="vae_dec",
                                 use_cuda_graph=False)
    graph.context.addresses.clear()  # as if a binding were lost
    with pytest.raises(RuntimeError, match="execute_async_v3 failed for vae_dec"):
        graph.run({"latents": torch.zeros(1, 4, SIZE // 8, SIZE // 8)})


@pytest.mark.parametrize("fake_trt", [11], indirect=True, ids=["trt11"])
def test_stream_pipeline_through_engine_graphs_matches_torch(fake_trt, ort_engines, tiny_components, embeds):
    from stream_core.accel.graph_runner import GraphRunner
    from stream_core.pipeline import StreamPipeline, StreamSettings
    from stream_core.runner import TorchRunner

    graphs = {c: trt_backend.TrtGraph(_plan(fake_trt, ort_engines["self"][c].main), name=c, use_cuda_graph=False)
              for c in ("unet", "vae_enc", "vae_dec")}
    runner = GraphRunner(graphs["unet"], graphs["vae_enc"], graphs["vae_dec"], device=torch.device("cpu"),
                         dtype=torch.float32, backend="tensorrt")
    pos, neg = embeds
    pipes = [StreamPipeline(r, tiny_components.scheduler,
                            StreamSettings(width=SIZE, height=SIZE, t_index_list=T_LIST, cfg_type="self", seed=4),
                            pos, neg)
             for r in (TorchRunner(tiny_components.unet, tiny_components.vae), runner)]
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        frame = torch.rand((1, 3, SIZE, SIZE), generator=g) * 2 - 1
        ref, out = (p(frame) for p in pipes)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
