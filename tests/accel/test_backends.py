"""Backend selection: clear errors for what is missing, never a silent fall back."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch

from stream_core.accel import AccelOptions, BackendUnavailableError, build_runner
from stream_core.runner import TorchRunner
from tests.accel.conftest import SIZE


def _build(components, acceleration, tmp_path, **kw):
    return build_runner(components, acceleration, batch=2, width=SIZE, height=SIZE, cache_dir=tmp_path,
                        allow_build=True, steps=2, cfg_type="self", **kw)


def test_none_is_the_torch_runner(tiny_components, tmp_path):
    runner = _build(tiny_components, "none", tmp_path)
    assert isinstance(runner, TorchRunner)
    assert not list(tmp_path.iterdir())  # no cache use at all


def test_unknown_acceleration(tiny_components, tmp_path):
    with pytest.raises(ValueError, match="none, compile, tensorrt, onnxruntime"):
        _build(tiny_components, "cuda", tmp_path)


def test_missing_tensorrt_says_what_to_install(tiny_components, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(BackendUnavailableError) as info:
        _build(tiny_components, "tensorrt", tmp_path)
    msg = str(info.value)
    assert "'tensorrt'" in msg and 'pip install "streambridge[tensorrt]"' in msg
    assert not list(tmp_path.iterdir())


def test_old_tensorrt_is_refused(tiny_components, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(BackendUnavailableError, match="TensorRT 8.6.1 is too old"):
        _build(tiny_components, "tensorrt", tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_tensorrt_without_cuda_says_so(tiny_components, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.9.0"))
    with pytest.raises(BackendUnavailableError, match="needs an NVIDIA GPU with CUDA"):
        _build(tiny_components, "tensorrt", tmp_path)


def test_missing_onnxruntime_says_what_to_install(tiny_components, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailableError) as info:
        _build(tiny_components, "onnxruntime", tmp_path)
    assert 'pip install "streambridge[onnx]"' in str(info.value)


def test_missing_onnxscript_for_the_dynamo_exporter(tiny_components, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(BackendUnavailableError, match="onnxscript"):
        _build(tiny_components, "onnxruntime", tmp_path)


def test_onnxruntime_cuda_provider_missing_is_an_error(tiny_components, tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        _build(tiny_components, "onnxruntime", tmp_path, options=AccelOptions(ort_provider="cuda"))


def test_compile_on_cpu_refuses_cuda_graphs(tiny_components, tmp_path):
    with pytest.raises(BackendUnavailableError, match="CUDA graphs need the model on a CUDA GPU"):
        _build(tiny_components, "compile", tmp_path, options=AccelOptions(cuda_graphs=True))


def test_compile_failure_is_a_clear_error_not_a_fallback(tiny_components, tmp_path, monkeypatch):
    def broken_compile(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.raises(BackendUnavailableError) as info:
        _build(tiny_components, "compile", tmp_path)
    msg = str(info.value)
    assert "does not work here" in msg and "C++ compiler" in msg and "acceleration: none or onnxruntime" in msg


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("STREAMBRIDGE_SLOW_TESTS") != "1",
                    reason="torch.compile of the tiny model takes ~2 min cold on 2 cores; set STREAMBRIDGE_SLOW_TESTS=1")
def test_compile_on_cpu_matches_eager(tiny_components, embeds, tmp_path):
    from stream_core.pipeline import StreamPipeline, StreamSettings

    runner = _build(tiny_components, "compile", tmp_path)
    pos, _ = embeds
    s = dict(width=SIZE, height=SIZE, t_index_list=(32, 45), cfg_type="self", seed=2)
    ref = StreamPipeline(TorchRunner(tiny_components.unet, tiny_components.vae), tiny_components.scheduler,
                         StreamSettings(**s), pos)
    pipe = StreamPipeline(runner, tiny_components.scheduler, StreamSettings(**s), pos)
    frame = torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.testing.assert_close(pipe(frame), ref(frame), atol=1e-4, rtol=0)


def test_tensorrt_progress_monitor_logs_phases(caplog):
    """The IProgressMonitor subclass (exercised with a stand-in base class: no TensorRT here)."""
    from stream_core.accel.tensorrt_backend import _make_monitor

    class FakeMonitorBase:
        def __init__(self):
            self.initialised = True

    monitor = _make_monitor(types.SimpleNamespace(IProgressMonitor=FakeMonitorBase), "TensorRT unet")
    assert monitor.initialised
    with caplog.at_level("INFO", logger="stream_core.accel.tensorrt_backend"):
        monitor.phase_start("Building engine", None, 3)
        monitor.phase_start("Tactic timing", "Building engine", 100)
        assert all(monitor.step_complete("Tactic timing", i) for i in range(100))  # never cancels
        monitor.phase_finish("Tactic timing")
        monitor.phase_finish("Building engine")
    text = caplog.text
    assert "TensorRT unet: Building engine (3 steps)" in text and "Tactic timing (100 steps)" in text
    assert _make_monitor(types.SimpleNamespace(), "x") is None  # no IProgressMonitor: phases are logged instead


def test_vram_check_before_a_build(monkeypatch, caplog):
    from stream_core.accel.errors import EngineBuildError
    from stream_core.accel.tensorrt_backend import check_vram

    gib = 1 << 30
    onnx = int(1.7 * gib)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (2 * gib, 24 * gib))
    with pytest.raises(EngineBuildError, match="not enough free GPU memory to build: 2.0 GiB free of 24.0 GiB"):
        check_vram(onnx, 4 * gib)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (20 * gib, 24 * gib))
    assert check_vram(onnx, 4 * gib) == 4 * gib
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (6 * gib, 24 * gib))
    with caplog.at_level("WARNING"):
        ws = check_vram(onnx, 4 * gib)
    assert gib <= ws < 4 * gib and "workspace reduced" in caplog.text
