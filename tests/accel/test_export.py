"""Exported ONNX graphs run in ONNX Runtime (CPU) and compute what the torch modules compute."""

from __future__ import annotations

import pytest
import torch

from stream_core.accel import StreamShape, unet_batch
from stream_core.accel.export import compare, export_onnx, graph_specs, torch_reference
from tests.accel.conftest import SIZE, STEPS

pytest.importorskip("onnxruntime")

from stream_core.accel.ort import OrtGraph


def _fresh_inputs(spec, seed):
    return spec.example_inputs(torch.device("cpu"), torch.float32, seed=seed)


@pytest.mark.parametrize("cfg", ["none", "self", "initialize", "full"])
def test_unet_graph_at_stream_batch_matches_torch(tiny_components, ort_engines, cfg):
    entry = ort_engines[cfg]["unet"]
    batch = unet_batch(STEPS, 1, cfg)
    assert entry.key.batch == batch and entry.key.cfg_type == cfg and entry.key.steps == STEPS
    graph = OrtGraph(entry.main)
    assert tuple(graph.inputs["latents"].shape) == (batch, 4, SIZE // 8, SIZE // 8)
    assert graph.inputs["timesteps"].dtype == torch.float32
    assert tuple(graph.inputs["text_embeds"].shape) == (batch, 77, 32)
    spec = graph_specs(tiny_components, batch=batch, frame_buffer=1, width=SIZE, height=SIZE)["unet"]
    for seed in (3, 4):  # different timesteps/prompts/latents: all graph inputs, no rebuild
        latents, timesteps, text = _fresh_inputs(spec, seed)
        timesteps = timesteps[torch.randperm(batch, generator=torch.Generator().manual_seed(seed))]
        out = graph.run({"latents": latents, "timesteps": timesteps, "text_embeds": text})["eps"]
        ref = torch_reference(tiny_components, spec, (latents, timesteps, text))
        compare(out, ref, rtol=1e-4, atol=1e-5, what=f"unet {cfg}")


def test_long_timesteps_give_the_same_eps(tiny_components, ort_engines):
    """The pipeline passes long timesteps; the graph takes float32: same numbers."""
    entry = ort_engines["self"]["unet"]
    graph = OrtGraph(entry.main)
    spec = graph_specs(tiny_components, batch=entry.key.batch, frame_buffer=1, width=SIZE, height=SIZE)["unet"]
    latents, timesteps, text = _fresh_inputs(spec, 9)
    long_t = timesteps.long()
    out = graph.run({"latents": latents, "timesteps": long_t, "text_embeds": text})["eps"].clone()
    with torch.no_grad():
        ref = tiny_components.unet(latents, long_t, encoder_hidden_states=text, return_dict=False)[0]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("component", ["vae_enc", "vae_dec", "text"])
def test_vae_and_text_graphs_match_torch(tiny_components, ort_engines, component):
    entry = ort_engines["none"][component]
    graph = OrtGraph(entry.main)
    spec = graph_specs(tiny_components, batch=2, frame_buffer=1, width=SIZE, height=SIZE)[component]
    inputs = _fresh_inputs(spec, 5)
    out = graph.run(dict(zip(spec.input_names, inputs, strict=True)))[spec.output_names[0]]
    ref = torch_reference(tiny_components, spec, inputs)
    compare(out, ref, rtol=1e-4, atol=1e-5, what=component)
    if component == "vae_dec":
        assert ref.abs().max() > 0  # a real decode, not an empty graph


def test_vae_encoder_output_is_scaled_latents(tiny_components, ort_engines):
    from stream_core.runner import TorchRunner

    graph = OrtGraph(ort_engines["none"]["vae_enc"].main)
    images = torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(2)) * 2 - 1
    out = graph.run({"images": images})["latents"]
    ref = TorchRunner(tiny_components.unet, tiny_components.vae).encode(images)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_torchscript_exporter_also_matches(tiny_components, tmp_path):
    spec = graph_specs(tiny_components, batch=3, frame_buffer=1, width=SIZE, height=SIZE)["unet"]
    files = export_onnx(tiny_components, spec, tmp_path / "unet.onnx", exporter="torchscript")
    assert files == [tmp_path / "unet.onnx"]
    import onnx

    model = onnx.load(str(tmp_path / "unet.onnx"))
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 18
    graph = OrtGraph(tmp_path / "unet.onnx")
    inputs = _fresh_inputs(spec, 6)
    out = graph.run(dict(zip(spec.input_names, inputs, strict=True)))["eps"]
    compare(out, torch_reference(tiny_components, spec, inputs), rtol=1e-4, atol=1e-5, what="torchscript unet")


def test_graph_rejects_other_shapes(ort_engines):
    graph = OrtGraph(ort_engines["none"]["vae_dec"].main)
    with pytest.raises(ValueError, match="static shapes"):
        graph.run({"latents": torch.zeros(2, 4, SIZE // 8, SIZE // 8)})


def test_stream_shape_checks_batch():
    assert StreamShape.for_stream(512, 512, 2, 2, "initialize").batch == 6
    with pytest.raises(ValueError, match="unet_batch is 4"):
        StreamShape(64, 64, 3, 1, 2, "full")
    with pytest.raises(ValueError, match="multiples of 8"):
        StreamShape(60, 64, 1)
