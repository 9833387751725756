"""``acceleration: auto``: the choice per device, its reason, and the persisted compile artefacts."""

from __future__ import annotations

import dataclasses
import logging
import types

import pytest
import torch

from stream_core.accel import auto
from stream_core.accel.auto import choose_acceleration, runner_for
from stream_core.accel.engines import StreamShape
from stream_core.accel.errors import AccelError, EngineMissingError
from tests.accel.conftest import SIZE, STEPS

SHAPE = StreamShape.for_stream(SIZE, SIZE, STEPS, 1, "self")


def fake(components, device: str, dtype=torch.float16):
    """The tiny components, claiming to live on ``device`` (only the choice reads it)."""
    return types.SimpleNamespace(unet=components.unet, vae=components.vae, text_encoder=components.text_encoder,
                                 tokenizer=components.tokenizer, scheduler=components.scheduler,
                                 info=components.info, device=torch.device(device), dtype=dtype)


def choose(components, tmp_path, requested="auto", **kw):
    kw.setdefault("allow_build", False)
    return choose_acceleration(components, requested, shape=SHAPE, cache_dir=tmp_path, **kw)


def test_cuda_picks_inductor_with_cuda_graphs(tiny_components, tmp_path):
    c = choose(fake(tiny_components, "cuda"), tmp_path)
    assert (c.backend, c.compile_mode, c.device) == ("compile", "inductor", "cuda")
    assert "inductor" in c.reason and "fps" in c.reason


def test_cuda_picks_tensorrt_only_when_its_engines_are_cached(tiny_components, tmp_path, monkeypatch):
    seen = []

    def cached(components, backend, shape, cache_dir, options):
        seen.append(backend)
        return True

    monkeypatch.setattr(auto, "_installed", lambda m: True)
    monkeypatch.setattr(auto, "_engines_cached", cached)
    c = choose(fake(tiny_components, "cuda"), tmp_path)
    assert c.backend == "tensorrt" and "cached" in c.reason and seen == ["tensorrt"]
    monkeypatch.setattr(auto, "_engines_cached", lambda *a: False)
    assert choose(fake(tiny_components, "cuda"), tmp_path).backend == "compile"


def test_mps_is_eager(tiny_components, tmp_path):
    c = choose(fake(tiny_components, "mps"), tmp_path)
    assert c.backend == "none" and "Apple" in c.reason


def test_cpu_without_cached_graphs_is_eager_and_says_how_to_get_faster(tiny_components, tmp_path):
    pytest.importorskip("onnxruntime")
    c = choose(tiny_components, tmp_path)
    assert c.backend == "none"
    assert "streambridge engines build --backend onnxruntime" in c.reason and "allow_build" in c.reason
    assert not list(tmp_path.iterdir())  # looking costs nothing and writes nothing


def test_cpu_with_allow_build_exports_for_onnxruntime(tiny_components, tmp_path):
    pytest.importorskip("onnxruntime")
    c = choose(tiny_components, tmp_path, allow_build=True)
    assert c.backend == "onnxruntime" and "allow_build" in c.reason


def test_cpu_with_cached_graphs_picks_onnxruntime(tiny_components, ort_engines, accel_cache):
    # the session cache holds every graph of the cfg "none" stream with the default exporter
    shape = StreamShape.for_stream(SIZE, SIZE, STEPS, 1, "none")
    c = choose_acceleration(tiny_components, "auto", shape=shape, cache_dir=accel_cache, allow_build=False)
    assert c.backend == "onnxruntime" and "cached" in c.reason
    other = StreamShape.for_stream(SIZE * 2, SIZE * 2, STEPS, 1, "none")  # another key: nothing cached
    assert choose_acceleration(tiny_components, "auto", shape=other, cache_dir=accel_cache,
                               allow_build=False).backend == "none"


def test_cpu_without_onnxruntime_is_eager(tiny_components, tmp_path, monkeypatch):
    monkeypatch.setattr(auto, "_installed", lambda m: m != "onnxruntime")
    c = choose(tiny_components, tmp_path, allow_build=True)
    assert c.backend == "none" and "onnxruntime is not installed" in c.reason


def test_sequential_mode_is_eager(tiny_components, tmp_path):
    c = choose(fake(tiny_components, "cuda"), tmp_path, denoising_batch=False)
    assert c.backend == "none" and "denoising_batch" in c.reason


@pytest.mark.parametrize("requested", ["none", "compile", "onnxruntime", "tensorrt"])
def test_an_explicit_backend_is_never_replaced(tiny_components, tmp_path, requested):
    c = choose(tiny_components, tmp_path, requested, denoising_batch=False)
    assert c.backend == requested and c.requested == requested and c.reason == "asked for explicitly"


def test_choice_is_logged_and_summarised(tiny_components, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="stream_core.accel.auto"):
        runner, choice = runner_for(tiny_components, "auto", width=SIZE, height=SIZE, steps=STEPS, frame_buffer=1,
                                    cfg_type="self", cache_dir=tmp_path, allow_build=False)
    assert runner is None
    assert f"acceleration auto -> none on cpu: {choice.reason}" in caplog.text
    assert choice.as_dict() == {"requested": "auto", "backend": "none", "compile_mode": None, "device": "cpu",
                                "reason": choice.reason}


def test_auto_on_cuda_without_compiled_artefacts_names_the_build_command(tiny_components, tmp_path, monkeypatch):
    """Nothing compiles at a show unless allowed: the missing inductor artefact is a start-up error."""
    from stream_core.accel import compile_cache

    monkeypatch.setattr(compile_cache, "device_identity", lambda device: "NVIDIA Test GPU/sm90")
    with pytest.raises(AccelError) as info:
        runner_for(fake(tiny_components, "cuda"), "auto", width=SIZE, height=SIZE, steps=STEPS, frame_buffer=1,
                   cfg_type="self", cache_dir=tmp_path, allow_build=False)
    msg = str(info.value)
    assert "'compile (inductor)' (chosen by acceleration: auto)" in msg
    assert "streambridge engines build --backend compile" in msg and "--device cuda" in msg
    assert f"--size {SIZE}x{SIZE} --steps {STEPS} --frame-buffer 1 --cfg self" in msg
    assert "allow_build: true" in msg
    assert isinstance(info.value.__cause__, EngineMissingError)


def test_explicit_compile_on_cpu_without_artefacts_is_refused(tiny_components, tmp_path):
    from stream_core.accel import build_runner

    with pytest.raises(EngineMissingError, match="streambridge engines build --backend compile"):
        build_runner(tiny_components, "compile", batch=SHAPE.batch, width=SIZE, height=SIZE, steps=STEPS,
                     cfg_type="self", cache_dir=tmp_path, allow_build=False)


def test_machine_choice_for_doctor():
    c = auto.machine_choice("cpu")
    assert c.device == "cpu" and c.backend in ("onnxruntime", "none") and c.reason
    assert c.summary().startswith("acceleration auto -> ")


# ---------------------------------------------------------------------------- the compile key
def _key(**over):
    from stream_core.accel.compile_cache import CompileKey

    base = dict(model="sha:a", vae="sha:v", loras=(), width=512, height=512, batch=2, steps=2, frame_buffer=1,
                cfg_type="self", dtype="float16", torch="2.13.0", cuda="13.0", device="NVIDIA H200/sm90",
                compile_mode="inductor", cuda_graphs=True, channels_last=False)
    base.update(over)
    return CompileKey(**base)


def test_every_compile_key_field_changes_the_key():
    base = _key()
    changed = dict(model="sha:b", vae="sha:w", loras=(("sha:l", 1.0),), width=640, height=384, batch=4, steps=4,
                   frame_buffer=2, cfg_type="full", dtype="bfloat16", torch="2.14.0", cuda="12.8",
                   device="NVIDIA RTX 4090/sm89", compile_mode="max-autotune", cuda_graphs=False, channels_last=True,
                   attention="math", fp8=True, controlnets=("sha:cn",))
    assert set(changed) == {f.name for f in dataclasses.fields(base)}  # every field is exercised
    digests = {base.digest()}
    for name, value in changed.items():
        d = _key(**{name: value}).digest()
        assert d not in digests, name
        digests.add(d)
    assert _key(loras=(("sha:l", 0.5),)).digest() != _key(loras=(("sha:l", 1.0),)).digest()  # LoRA scale


def test_compile_key_reads_identity_shape_and_runtime(tiny_components, tmp_path):
    from stream_core.accel.cache import EngineCache, identify
    from stream_core.accel.compile_cache import compile_key

    ident = identify(tiny_components, EngineCache(tmp_path).memo())
    k = compile_key(ident, SHAPE, dtype=torch.float32, device=torch.device("cpu"), compile_mode="inductor",
                    cuda_graphs=False, channels_last=False)
    assert (k.model, k.vae, k.width, k.batch, k.steps, k.cfg_type) == (ident.model, ident.vae, SIZE, SHAPE.batch,
                                                                       STEPS, "self")
    assert k.torch == torch.__version__ and k.dtype == "float32" and k.device.startswith("cpu-")
    lora = dataclasses.replace(ident, loras=(("sha:x", 1.0),))
    assert compile_key(lora, SHAPE, dtype=torch.float32, device=torch.device("cpu"), compile_mode="inductor",
                       cuda_graphs=False, channels_last=False).stem != k.stem


def test_ready_marker_belongs_to_its_key(tmp_path):
    from stream_core.accel.compile_cache import CompiledArtefacts

    a = CompiledArtefacts(tmp_path, _key())
    assert not a.ready()
    a.prepare()
    assert not a.ready()  # a started but unfinished compile is not an artefact
    a.mark_ready(1.0)
    assert a.ready()
    (a.folder / "ready.json").write_text((a.folder / "ready.json").read_text().replace(a.key.digest(), "0" * 64))
    assert not a.ready()  # a marker of another key (copied in, edited) does not count


def test_inductor_cache_persists_in_the_key_folder_and_a_second_compile_hits_it(tmp_path):
    """The redirect to the per-key folder, with torch's own counters (a small graph: ~10-20 s cold)."""
    from torch._dynamo.utils import counters

    from stream_core.accel.compile_cache import inductor_cache

    folder = tmp_path / "inductor" / "k"
    x = torch.randn(4, 8)

    def fn(t):
        return torch.nn.functional.gelu(t * 3.0 + 1.0).sum(dim=1)

    ref = fn(x)
    torch._dynamo.reset()
    counters.clear()
    with inductor_cache(folder):
        torch.testing.assert_close(torch.compile(fn)(x), ref)
    assert counters["inductor"]["fxgraph_cache_miss"] >= 1
    assert (folder / "fxgraph").is_dir() and any((folder / "fxgraph").rglob("*"))
    torch._dynamo.reset()  # as a new process would: nothing compiled in memory
    counters.clear()
    with inductor_cache(folder):
        compiled = torch.compile(fn)
        torch.testing.assert_close(compiled(x), ref)
    assert counters["inductor"]["fxgraph_cache_hit"] >= 1 and counters["inductor"]["fxgraph_cache_miss"] == 0
    torch.testing.assert_close(compiled(x * 2), fn(x * 2))  # still runs after the folder is released
    torch._dynamo.reset()


# ---------------------------------------------------------------------------- FP8
def test_fp8_is_refused_off_ada_and_hopper(tiny_components, tmp_path):
    from stream_core.accel import AccelOptions, BackendUnavailableError, build_runner

    with pytest.raises(BackendUnavailableError, match="compute capability 8.9"):
        build_runner(tiny_components, "compile", batch=SHAPE.batch, width=SIZE, height=SIZE, steps=STEPS,
                     cfg_type="self", cache_dir=tmp_path, allow_build=True, options=AccelOptions(fp8=True))


def test_fp8_linears_stay_close_and_psnr_is_reported(tiny_components, embeds):
    from stream_core.accel.fp8 import Fp8Linear, fp8_psnr, psnr
    from stream_core.pipeline import StreamSettings

    lin = torch.nn.Linear(32, 64)
    x = torch.randn(3, 5, 32)
    q = Fp8Linear(lin)
    err = (q(x) - lin(x)).abs().max() / lin(x).abs().max()
    assert 0 < err < 0.1  # e4m3 keeps 3 mantissa bits: close, not equal
    assert psnr(x.clamp(-1, 1), x.clamp(-1, 1)) == float("inf")
    before = {k: v.clone() for k, v in tiny_components.unet.state_dict().items()}
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=(32, 45), cfg_type="self", seed=2)
    r = fp8_psnr(tiny_components, s, prompt_embeds=embeds[0], frames=3, check_device=False)
    assert r["layers"] > 0 and 10 < r["min_psnr_db"] <= r["psnr_db"] < float("inf")
    after = tiny_components.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the loaded model is untouched


@pytest.mark.parametrize(("device", "allow_build", "expected"), [
    ("cuda", None, True),    # unset: auto's inductor compile happens at the first start (then cached)
    ("cuda", False, False),  # false: never build at start-up
    ("cuda", True, True),
])
def test_unset_allow_build_lets_auto_compile_once_at_start_up(tiny_components, tmp_path, monkeypatch,
                                                               device, allow_build, expected):
    seen = {}

    def fake_build(components, backend, **kw):
        seen.update(backend=backend, allow_build=kw["allow_build"], mode=kw["options"].compile_mode)
        return "runner"

    monkeypatch.setattr("stream_core.accel.engines.build_runner", fake_build)
    runner, choice = runner_for(fake(tiny_components, device), "auto", width=SIZE, height=SIZE, steps=STEPS,
                                frame_buffer=1, cfg_type="self", cache_dir=tmp_path, allow_build=allow_build)
    assert runner == "runner" and seen == {"backend": "compile", "allow_build": expected, "mode": "inductor"}


def test_unset_allow_build_exports_nothing_on_the_cpu(tiny_components, tmp_path):
    runner, choice = runner_for(tiny_components, "auto", width=SIZE, height=SIZE, steps=STEPS, frame_buffer=1,
                                cfg_type="self", cache_dir=tmp_path, allow_build=None)
    assert runner is None and choice.backend == "none"


def test_explicit_tensorrt_is_not_built_when_allow_build_is_unset(tiny_components, tmp_path, monkeypatch):
    seen = {}

    def fake_build(components, backend, **kw):
        seen.update(backend=backend, allow_build=kw["allow_build"])
        return "runner"

    monkeypatch.setattr("stream_core.accel.engines.build_runner", fake_build)
    runner_for(fake(tiny_components, "cuda"), "tensorrt", width=SIZE, height=SIZE, steps=STEPS, frame_buffer=1,
               cfg_type="self", cache_dir=tmp_path, allow_build=None)
    assert seen == {"backend": "tensorrt", "allow_build": False}
