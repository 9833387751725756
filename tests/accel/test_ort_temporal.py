"""The temporal bank under the engine backends: ONNX Runtime (real, on the CPU) runs U-Net graphs
that take the bank as inputs (``unet_tmp``, ``unet_res_tmp``) and gives the eager pipeline's
frames for every live setting; the bank adopts the graph's input buffers (no ring copied per
call); the bank's built size is part of the engine key; the TensorRT runner side runs the same
graph against FakeTensorRT (tests/accel/fake_tensorrt.py, a fake over onnxruntime)."""

from __future__ import annotations

import copy
import dataclasses
import sys
import types

import pytest
import torch

from stream_core.accel import (
    AccelOptions,
    EngineMissingError,
    StreamShape,
    build_engines,
    build_runner,
)
from stream_core.pipeline import RebuildRequired, StreamPipeline, StreamSettings
from stream_core.runner import TorchRunner
from tests.accel.conftest import SIZE, STEPS, T_LIST
from tests.core.controlnet_fixtures import *  # noqa: F403

pytest.importorskip("onnxruntime")

FRAMES = 2  # the bank's built size for the shared engines
TS = AccelOptions(exporter="torchscript")  # ~7x faster to export than dynamo on 2 cores
TOL = 5e-5  # ORT vs torch on these frames: ~1e-5 with injection, ~2e-7 without


def _clip(count, seed=3):
    """A slowly moving pattern (consecutive frames alike, as the bank expects)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand((1, 3, SIZE, SIZE), generator=g) * 2 - 1
    return [torch.roll(base, shifts=2 * k, dims=3) for k in range(count)]


def _settings(cfg="self", **kw):
    return StreamSettings(width=SIZE, height=SIZE, t_index_list=T_LIST, cfg_type=cfg, guidance_scale=1.5, delta=0.9,
                          seed=4, **kw)


def _eager(components, embeds, cfg="self", units=(), **kw):
    """The reference: the eager pipeline on its own copy of the U-Net (the bank installs processors)."""
    runner = TorchRunner(copy.deepcopy(components.unet), components.vae, [u.model for u in units])
    return StreamPipeline(runner, components.scheduler, _settings(cfg, **kw), *embeds,
                          **({"controlnets": list(units)} if units else {}))


@pytest.fixture(scope="module")
def ort_bank(tiny_components, accel_cache):
    """``make(cfg) -> GraphRunner`` over the cached temporal graphs (built once per guidance mode)."""
    built: set[str] = set()

    def make(cfg="self", frames=FRAMES):
        shape = StreamShape.for_stream(SIZE, SIZE, STEPS, 1, cfg)
        key = (cfg, frames)
        runner = build_runner(tiny_components, "onnxruntime", batch=shape.batch, width=SIZE, height=SIZE,
                              cache_dir=accel_cache, allow_build=key not in built, steps=STEPS, cfg_type=cfg,
                              options=TS, temporal_frames=frames)
        built.add(key)
        return runner

    return make


def _pair(ort_bank, components, embeds, cfg="self", **kw):
    ref = _eager(components, embeds, cfg, temporal_max_frames=FRAMES, **kw)
    pipe = StreamPipeline(ort_bank(cfg), components.scheduler, _settings(cfg, temporal_max_frames=FRAMES, **kw),
                          *embeds)
    return ref, pipe


SCENARIOS = {
    "cache, frames max": {},
    "cache, frames 1": {"temporal_frames": 1},
    "injection": {"temporal_injection": 0.6},
    "interval 2": {"temporal_interval": 2, "temporal_injection": 0.3},
    "cache off": {"temporal_cache": False},
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_onnxruntime_with_a_bank_matches_the_eager_pipeline(ort_bank, tiny_components, embeds, scenario):
    kw = SCENARIOS[scenario]
    ref, pipe = _pair(ort_bank, tiny_components, embeds, **kw)
    assert pipe.temporal is not None and pipe.temporal.static and not ref.temporal.static
    plain = _eager(tiny_components, embeds) if scenario == "cache off" else None
    for frame in _clip(6):
        a, b = ref(frame), pipe(frame)
        torch.testing.assert_close(b, a, atol=TOL, rtol=0)
        if plain is not None:  # the all-masked bank is the plain U-Net, to float rounding
            torch.testing.assert_close(b, plain(frame), atol=TOL, rtol=0)
    # what the graph's layers computed reached the ring, slot by slot, as the eager layers' did
    for store in ("keys", "values", "outputs"):
        for mine, theirs in zip(getattr(pipe.temporal, store), getattr(ref.temporal, store), strict=True):
            torch.testing.assert_close(mine, theirs, atol=2e-4, rtol=2e-4)
    assert int(pipe.temporal._ptr) == int(ref.temporal._ptr)


@torch.no_grad()
def test_the_graph_reads_the_ring_as_the_eager_layers_do(ort_bank, tiny_components, embeds):
    """One U-Net call over a ring of distinct random contents (so that reading it changes a lot):
    the graph's noise prediction and fresh keys/values/outputs equal the eager layers', for the
    cache on (every slot / the newest), with injection, and off."""
    pipe = StreamPipeline(ort_bank(), tiny_components.scheduler, _settings(temporal_max_frames=FRAMES), *embeds)
    ref = _eager(tiny_components, embeds, temporal_max_frames=FRAMES)
    g = torch.Generator().manual_seed(8)
    for store in ("keys", "values", "outputs"):
        for mine, theirs in zip(getattr(pipe.temporal, store), getattr(ref.temporal, store), strict=True):
            t = torch.randn(mine.shape, generator=g) * 2
            mine.copy_(t)
            theirs.copy_(t)
    lat = torch.randn((pipe.unet_batch, 4, SIZE // 8, SIZE // 8), generator=g)
    t = torch.tensor([359, 99])
    text = pipe._text_batch
    eps = {}
    for label, change in (("every slot", lambda p: None), ("newest", lambda p: p.set_temporal_frames(1)),
                          ("injection", lambda p: p.set_temporal_injection(0.8)),
                          ("off", lambda p: (p.set_temporal_cache(False), p.set_temporal_injection(0.0)))):
        outs = []
        for p in (pipe, ref):
            change(p)
            bank = p.temporal
            bank._fill = False  # the ring holds two frames already
            bank._ptr.fill_(0)
            bank.begin_frame()
            bank.begin_call(0, bank.rows, 0)
            outs.append((p.runner.unet(lat, t, text), [tuple(x.clone() for x in r) for r in bank.fresh]))
            bank.abandon_call()
        (got, got_fresh), (want, want_fresh) = outs
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=lambda m, label=label: f"{label}: {m}")
        for a, b in zip(got_fresh, want_fresh, strict=True):
            for x, y in zip(a, b, strict=True):
                torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
        eps[label] = got
    for label in ("every slot", "newest", "injection"):  # reading the ring moves the prediction a lot
        assert float((eps[label] - eps["off"]).abs().max()) > 1e-2, label


@pytest.mark.parametrize("cfg", ["full", "initialize"])
def test_negative_rows_read_the_ring_of_the_stage_they_guide(ort_bank, tiny_components, embeds, cfg):
    ref, pipe = _pair(ort_bank, tiny_components, embeds, cfg, temporal_injection=0.4)
    for frame in _clip(4):
        torch.testing.assert_close(pipe(frame), ref(frame), atol=TOL, rtol=0)


def test_live_toggles_and_resets_act_on_the_next_frame(ort_bank, tiny_components, embeds):
    ref, pipe = _pair(ort_bank, tiny_components, embeds)
    _, steady = _pair(ort_bank, tiny_components, embeds)  # the same stream without the changes
    changes = {
        2: lambda p: p.set_temporal_cache(False),
        3: lambda p: p.set_temporal_cache(True),
        4: lambda p: (p.set_temporal_frames(1), p.set_temporal_injection(0.7)),
        5: lambda p: p.set_temporal_interval(3),
        7: lambda p: p.reset(),
        8: lambda p: p.temporal.reset(),  # the bank alone: the next frame refills the ring
    }
    for k, frame in enumerate(_clip(11)):
        if k in changes:
            changes[k](ref)
            changes[k](pipe)
        a, b = ref(frame), pipe(frame)
        steady(frame)
        torch.testing.assert_close(b, a, atol=TOL, rtol=0, msg=lambda m, k=k: f"frame {k}: {m}")
        if k in (2, 4):  # the change shows on this very frame (in the output latents: the tiny
            # random model's attention barely moves its pixels)
            moved = float((pipe._fb_prev - steady._fb_prev).abs().max())
            err = float((pipe._fb_prev - ref._fb_prev).abs().max())
            assert moved > max(10 * err, 1e-5), f"frame {k} did not change: {moved} vs {err}"


def test_the_bank_adopts_the_graph_inputs_and_a_call_copies_no_ring(ort_bank, tiny_components, embeds):
    runner = ort_bank()
    graph = runner.graphs["unet_tmp"]
    pipe = StreamPipeline(runner, tiny_components.scheduler, _settings(temporal_max_frames=FRAMES), *embeds)
    bank = pipe.temporal
    n = len(bank.names)

    def owned() -> list[tuple[str, int]]:
        pairs = [("attn_bias", bank._attn_bias), ("inj_bias", bank._inj_bias), ("inj_scale", bank._inj_scale)]
        for kind, store in (("k", bank.keys), ("v", bank.values), ("o", bank.outputs)):
            pairs += [(f"bank_{kind}_{i}", store[i]) for i in range(n)]
        return [(name, t.data_ptr()) for name, t in pairs]

    before = owned()
    assert before == [(name, graph.inputs[name].data_ptr()) for name, _ in before]
    fed: list[set[str]] = []
    run = graph.run
    graph.run = lambda feeds: (fed.append(set(feeds)), run(feeds))[1]
    rings = [t.clone() for t in bank.keys]
    for frame in _clip(3):
        pipe(frame)
    # one U-Net call per frame (and the priming ones), each fed latents, timesteps and text only
    assert fed == [{"latents", "timesteps", "text_embeds"}] * (STEPS - 1 + 3)
    assert owned() == before  # the ring is written in place, where the graph reads it
    assert not torch.equal(bank.keys[0], rings[0])
    fresh = graph.outputs
    assert [r[0].data_ptr() for r in bank.fresh] == [fresh[f"new_k_{i}"].data_ptr() for i in range(n)]


def test_a_call_outside_the_stream_runs_the_plain_unet_and_keeps_the_settings(ort_bank, tiny_components, embeds):
    runner = ort_bank()
    pipe = StreamPipeline(runner, tiny_components.scheduler, _settings(temporal_max_frames=FRAMES,
                                                                       temporal_injection=0.5), *embeds)
    for frame in _clip(3):
        pipe(frame)
    bank = pipe.temporal
    bank.begin_frame()
    saved = [bank._attn_bias.clone(), bank._inj_bias.clone(), bank._inj_scale.clone()]
    assert torch.isfinite(saved[0]).any() and float(saved[2]) == 0.5  # the bank is read, injection on
    g = torch.Generator().manual_seed(2)
    lat = torch.randn((pipe.unet_batch, 4, SIZE // 8, SIZE // 8), generator=g)
    t = torch.tensor([359, 99])
    text = pipe._text_batch
    with torch.inference_mode():
        want = TorchRunner(tiny_components.unet, tiny_components.vae).unet(lat, t, text)
        got = runner.unet(lat, t, text)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for a, b in zip(saved, (bank._attn_bias, bank._inj_bias, bank._inj_scale), strict=True):
        assert torch.equal(a, b)


def test_max_frames_is_part_of_the_key_and_a_stale_graph_is_never_used(ort_bank, tiny_components, embeds,
                                                                        accel_cache):
    from stream_core.accel.cache import EngineCache, identify
    from stream_core.accel.engines import _target, engine_key
    from stream_core.accel.export import text_shape

    ort_bank()  # the max_frames 2 graphs are cached
    shape = StreamShape.for_stream(SIZE, SIZE, STEPS, 1, "self")
    target = _target("onnxruntime", tiny_components, TS)
    identity = identify(tiny_components, EngineCache(accel_cache).memo())
    text = text_shape(tiny_components)
    keys = {m: engine_key(identity, target, "unet_tmp", shape, text, "torchscript", temporal_frames=m)
            for m in (1, 2, 3)}
    plain = engine_key(identity, target, "unet", shape, text, "torchscript")
    assert len({k.digest() for k in (*keys.values(), plain)}) == 4
    assert "temporal_frames" not in plain.fields()  # keys without a bank are what they always were
    assert keys[2].fields()["temporal_frames"] == 2
    with pytest.raises(ValueError, match="max_frames"):
        engine_key(identity, target, "unet_tmp", shape, text, "torchscript")
    # another built size finds nothing cached, and the message gives the build line for it
    with pytest.raises(EngineMissingError) as info:
        build_runner(tiny_components, "onnxruntime", batch=shape.batch, width=SIZE, height=SIZE,
                     cache_dir=accel_cache, allow_build=False, steps=STEPS, cfg_type="self", options=TS,
                     temporal_frames=1)
    assert "--temporal-frames 1" in str(info.value) and "unet_tmp" in str(info.value)
    # a bank of another size than the graph's is refused at start, naming the fix
    with pytest.raises(RebuildRequired, match="built for 2.*--temporal-frames 1"):
        StreamPipeline(ort_bank(), tiny_components.scheduler, _settings(temporal_max_frames=1), *embeds)


def test_a_graph_built_without_the_bank_is_refused(ort_engines, tiny_components, embeds, accel_cache):
    runner = build_runner(tiny_components, "onnxruntime", batch=2, width=SIZE, height=SIZE, cache_dir=accel_cache,
                          allow_build=False, steps=STEPS, cfg_type="none")
    with pytest.raises(RebuildRequired, match="built without a temporal bank.*--temporal-frames"):
        StreamPipeline(runner, tiny_components.scheduler, _settings("none", temporal_max_frames=1), *embeds)
    # and the plain pipeline on it is untouched
    StreamPipeline(runner, tiny_components.scheduler, _settings("none"), *embeds)(_clip(1)[0])


def test_sequential_denoising_is_refused_by_the_graph(ort_bank, tiny_components, embeds):
    pipe = StreamPipeline(ort_bank(), tiny_components.scheduler,
                          _settings(temporal_max_frames=FRAMES, denoising_batch=False), *embeds)
    with pytest.raises(RuntimeError, match="sequential denoising"):
        pipe(_clip(1)[0])


@pytest.fixture(scope="module")
def one_cn(cn_components):
    return dataclasses.replace(cn_components, controlnets=[cn_components.controlnets[0]],
                               info={**cn_components.info, "controlnets": [(cn_components.controlnets[0].spec.model,
                                                                           "none")]})


def _cn_clip(count, seed):
    g = torch.Generator().manual_seed(seed)
    coarse = [torch.rand((1, 3, 4, 4), generator=g) for _ in range(count)]
    return [torch.nn.functional.interpolate(c, size=(SIZE, SIZE), mode="nearest") for c in coarse]


def test_onnxruntime_bank_with_a_controlnet_matches_eager(one_cn, embeds, accel_cache):
    units = one_cn.controlnets
    kw = {"temporal_max_frames": FRAMES, "temporal_injection": 0.5}
    ref = _eager(one_cn, embeds, "self", units, **kw)
    runner = build_runner(one_cn, "onnxruntime", batch=ref.unet_batch, width=SIZE, height=SIZE,
                          cache_dir=accel_cache, allow_build=True, steps=STEPS, cfg_type="self", options=TS,
                          temporal_frames=FRAMES)
    assert {"unet_tmp", "unet_res_tmp", "controlnet0"} <= set(runner.graphs)
    res_graph, graph = runner.graphs["unet_res_tmp"], runner.graphs["unet_tmp"]
    pipe = StreamPipeline(runner, one_cn.scheduler, _settings(**kw), *embeds, controlnets=list(units))
    bank = pipe.temporal
    # both U-Net graphs read the one bank, in place
    assert res_graph.inputs["bank_k_0"].data_ptr() == graph.inputs["bank_k_0"].data_ptr() == bank.keys[0].data_ptr()
    for k, (x, c) in enumerate(zip(_cn_clip(5, 1), _cn_clip(5, 2), strict=True)):
        if k == 2:  # the ControlNet off: the plain temporal graph runs, on the same ring
            for p in (ref, pipe):
                p.set_controlnet(0, enabled=False)
        if k == 3:
            for p in (ref, pipe):
                p.set_controlnet(0, enabled=True, scale=0.6)
        a, b = ref(x * 2 - 1, [c]), pipe(x * 2 - 1, [c])
        torch.testing.assert_close(b, a, atol=TOL, rtol=0, msg=lambda m, k=k: f"frame {k}: {m}")


def test_the_single_controlnet_graph_is_refused_with_a_bank(one_cn, tmp_path):
    with pytest.raises(ValueError, match="controlnet_graph: unet.*controlnet_graph: separate"):
        build_runner(one_cn, "onnxruntime", batch=2, width=SIZE, height=SIZE, cache_dir=tmp_path, allow_build=True,
                     steps=STEPS, cfg_type="self", options=AccelOptions(controlnet_graph="unet"), temporal_frames=2)
    assert not list(tmp_path.glob("ort/*"))  # refused before anything was exported


def test_tensorrt_runner_side_carries_the_bank(ort_bank, tiny_components, embeds, accel_cache, monkeypatch):
    """The TensorRT path: the same temporal ONNX graph, built and run by FakeTensorRT (the documented
    TensorRT API over onnxruntime, reading and writing the addresses the runner binds), under the same
    runner code. What real TensorRT does (fp16 build, CUDA-graph capture) is not run here."""
    from stream_core.accel import tensorrt_backend as trt_backend
    from stream_core.accel.export import temporal_graph_specs
    from stream_core.accel.graph_runner import GraphRunner, TemporalGraphs
    from stream_core.temporal import skeleton_unet
    from tests.accel.fake_tensorrt import FakeTensorRT

    shape = StreamShape.for_stream(SIZE, SIZE, STEPS, 1, "self")
    ort_bank()
    done = build_engines(tiny_components, "onnxruntime", shape, accel_cache, which=("unet", "vae_enc", "vae_dec"),
                         options=TS, temporal_frames=FRAMES)
    onnx = {e.key.component: e.main for e, built in done}
    assert not any(built for _, built in done)  # the cached graphs, found by key
    assert set(onnx) == {"unet_tmp", "vae_enc", "vae_dec"}
    fake = FakeTensorRT(version=11)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_backend, "require_cuda", lambda *a: torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (40 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: types.SimpleNamespace(cuda_stream=7))
    graphs = {c: trt_backend.TrtGraph(trt_backend.build_engine(p, label=f"TensorRT {c}"), name=c, use_cuda_graph=False)
              for c, p in onnx.items()}
    lay = temporal_graph_specs(tiny_components, batch=shape.batch, rows=STEPS, width=SIZE, height=SIZE,
                               max_frames=FRAMES)["unet_tmp"].temporal
    temporal = TemporalGraphs(lay.max_frames, lay.rows, lay.uncond, lay.layers, skeleton_unet(tiny_components.unet))
    runner = GraphRunner(graphs["unet_tmp"], graphs["vae_enc"], graphs["vae_dec"], device=torch.device("cpu"),
                         dtype=torch.float32, backend="tensorrt", temporal=temporal)
    ref = _eager(tiny_components, embeds, temporal_max_frames=FRAMES, temporal_injection=0.5)
    pipe = StreamPipeline(runner, tiny_components.scheduler,
                          _settings(temporal_max_frames=FRAMES, temporal_injection=0.5), *embeds)
    engine = graphs["unet_tmp"]
    for k, frame in enumerate(_clip(4)):
        if k == 2:
            for p in (ref, pipe):
                p.set_temporal_cache(False)
        torch.testing.assert_close(pipe(frame), ref(frame), atol=TOL, rtol=0)
    # the engine reads the bank where it was bound once: the bank's own tensors
    addresses = engine.context.addresses
    assert addresses["bank_k_0"] == pipe.temporal.keys[0].data_ptr()
    assert addresses["attn_bias"] == pipe.temporal._attn_bias.data_ptr()
    # rebinding an input (how a second engine shares the bank): the new address is set, a captured
    # CUDA graph is dropped (captured again on the next run), a mismatched tensor refused
    other = trt_backend.TrtGraph(trt_backend.build_engine(onnx["unet_tmp"], label="TensorRT unet_tmp"),
                                 name="unet_tmp", use_cuda_graph=False)
    other._graph = object()
    other.bind_input("attn_bias", pipe.temporal._attn_bias)
    assert other.context.addresses["attn_bias"] == pipe.temporal._attn_bias.data_ptr() and other._graph is None
    assert other.inputs["attn_bias"] is pipe.temporal._attn_bias
    with pytest.raises(ValueError, match="cannot bind input 'attn_bias'"):
        other.bind_input("attn_bias", torch.zeros(FRAMES + 1))


def test_runner_for_builds_the_graph_for_the_configured_bank(ort_bank, tiny_components, embeds, accel_cache, tmp_path):
    from stream_core.accel.auto import runner_for
    from stream_core.accel.errors import AccelError

    ort_bank()
    common = dict(width=SIZE, height=SIZE, steps=STEPS, frame_buffer=1, cfg_type="self", cache_dir=accel_cache,
                  allow_build=False, options=TS)
    runner, choice = runner_for(tiny_components, "onnxruntime", temporal=FRAMES, **common)
    assert choice.backend == "onnxruntime" and "unet_tmp" in runner.graphs
    pipe = StreamPipeline(runner, tiny_components.scheduler, _settings(temporal_max_frames=FRAMES), *embeds)
    pipe(_clip(1)[0])
    with pytest.raises(AccelError, match="temporal=max_frames"):  # "a bank" is not a graph shape
        runner_for(tiny_components, "onnxruntime", temporal=True, **common)
    # auto on the CPU with a bank: ONNX Runtime when the graphs carrying this bank size are cached...
    runner, choice = runner_for(tiny_components, "auto", temporal=FRAMES, **common)
    assert choice.backend == "onnxruntime" and "unet_tmp" in runner.graphs and "temporal bank of" in choice.reason
    # ...not for another bank size, nor from an empty cache without allow_build: eager, with the build line
    for frames, cache in ((FRAMES + 1, accel_cache), (FRAMES, tmp_path / "empty")):
        choice = runner_for(tiny_components, "auto", temporal=frames, **{**common, "cache_dir": cache})[1]
        assert choice.backend == "none" and f"--temporal-frames {frames}" in choice.reason


def test_engines_build_command_builds_the_temporal_graph(ort_bank, tiny_model_dir, accel_cache, capsys):
    from bridge.cli import main

    ort_bank()
    base = ["engines", "build", "--model", str(tiny_model_dir), "--size", f"{SIZE}x{SIZE}", "--steps", str(STEPS),
            "--cfg", "self", "--backend", "onnxruntime", "--only", "unet", "--exporter", "torchscript",
            "--cache", str(accel_cache)]
    capsys.readouterr()
    assert main([*base, "--temporal-frames", str(FRAMES)]) == 0
    out = capsys.readouterr().out
    assert f"temporal bank of {FRAMES} frame(s)" in out.splitlines()[0]
    assert any(line.startswith("cached  unet_tmp") for line in out.splitlines()), out  # the runner's graph
    assert main(["engines", "list", "--cache", str(accel_cache)]) == 0
    assert f"bank {FRAMES}" in capsys.readouterr().out
    assert main([*base, "--temporal-frames", "5"]) == 2


def test_build_command_names_the_bank(tiny_components, tmp_path):
    from stream_core.accel.engines import build_command

    shape = StreamShape.for_stream(SIZE, SIZE, STEPS, 1, "self")
    assert "--temporal-frames 3" in build_command(tiny_components, "tensorrt", shape, tmp_path, 3)
    assert "--temporal-frames" not in build_command(tiny_components, "tensorrt", shape, tmp_path)


class FakeStaticGraph:
    """A fake ``StaticGraph``: the named static buffers of a graph spec on one device and dtype, and
    a ``run`` that copies the feeds in (through the real ``copy_feeds``) and computes nothing."""

    def __init__(self, inputs, outputs, device, dtype):
        def make(shape, dt):
            return torch.empty(shape, device=device, dtype=dtype if dt.is_floating_point else dt)

        self.inputs = {name: make(shape, torch.float32 if name == "timesteps" else dt) for name, shape, dt in inputs}
        self.outputs = {name: make(shape, dt) for name, shape, dt in outputs}
        self.calls = 0

    def run(self, feeds):
        from stream_core.accel.graph_runner import copy_feeds

        copy_feeds(self, feeds, "fake")
        self.calls += 1
        return self.outputs


def test_graph_runner_with_a_bank_stays_on_the_device_without_host_syncs(tiny_components, embeds):
    """The runner's bank plumbing on the ``meta`` device in float16 (what a CUDA fp16 TensorRT
    engine gives): ``.item()`` / ``bool(tensor)`` would raise there, and a tensor made on the CPU
    would not mix with the graph's buffers."""
    from stream_core.accel.export import temporal_graph_specs
    from stream_core.accel.graph_runner import GraphRunner, TemporalGraphs
    from stream_core.temporal import skeleton_unet

    dev, dt = torch.device("meta"), torch.float16
    cfg, batch = "full", 2 * STEPS
    spec = temporal_graph_specs(tiny_components, batch=batch, rows=STEPS, width=SIZE, height=SIZE,
                                max_frames=FRAMES)["unet_tmp"]
    lay = spec.temporal
    n = lay.layers
    outs = [("eps", (batch, 4, SIZE // 8, SIZE // 8), dt)]
    shapes = {name: shape for name, shape, _ in spec.inputs}
    for kind in "kvo":
        outs += [(f"new_{kind}_{i}", (batch, *shapes[f"bank_{kind}_{i}"][2:]), dt) for i in range(n)]
    unet = FakeStaticGraph(spec.inputs, outs, dev, dt)
    enc = FakeStaticGraph([("images", (1, 3, SIZE, SIZE), dt)], [("latents", (1, 4, SIZE // 8, SIZE // 8), dt)],
                          dev, dt)
    dec = FakeStaticGraph([("latents", (1, 4, SIZE // 8, SIZE // 8), dt)], [("images", (1, 3, SIZE, SIZE), dt)],
                          dev, dt)
    runner = GraphRunner(unet, enc, dec, device=dev, dtype=dt, backend="tensorrt",
                         temporal=TemporalGraphs(lay.max_frames, lay.rows, lay.uncond, n,
                                                 skeleton_unet(tiny_components.unet)))
    pipe = StreamPipeline(runner, tiny_components.scheduler,
                          _settings(cfg, temporal_max_frames=FRAMES, temporal_injection=0.5, temporal_interval=2),
                          *embeds)
    frame = torch.empty((1, 3, SIZE, SIZE), device=dev, dtype=dt)
    for k in range(4):
        out = pipe(frame)
        if k == 1:
            pipe.set_temporal_cache(False)
            pipe.set_temporal_frames(1)
        if k == 2:
            pipe.reset()
    assert (out.device, out.dtype) == (dev, dt)
    assert unet.calls == STEPS - 1 + 4 + STEPS - 1  # primed twice (start, reset)
    for name, t in pipe.temporal.tensors().items():
        assert t.device == dev, name
        if t.is_floating_point():
            assert t.dtype == dt, name
    assert pipe.temporal.keys[0] is unet.inputs["bank_k_0"]
