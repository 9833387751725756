"""Fixtures shared by the acceleration tests: one engine cache per session, so each ONNX export
(a few seconds each on 2 cores) happens once and every test after reuses it."""

from __future__ import annotations

import pytest

SIZE = 64
STEPS = 2
T_LIST = (32, 45)


@pytest.fixture(scope="session")
def accel_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="session")
def embeds(tiny_components):
    from stream_core.prompts import PromptEncoder

    enc = PromptEncoder(tiny_components.tokenizer, tiny_components.text_encoder)
    return enc.encode("a neon city at night"), enc.encode("")


@pytest.fixture(scope="session")
def ort_engines(tiny_components, accel_cache):
    """ONNX Runtime graphs for every guidance mode at the test stream's shapes: {cfg: {comp: entry}}.

    ``none`` and the VAE/text graphs go through the default (dynamo) exporter; the other modes'
    U-Nets through the TorchScript exporter, which is 7x faster on 2 cores (both are verified
    against torch on export, and the tests below check them again on fresh inputs).
    """
    pytest.importorskip("onnxruntime")
    from stream_core.accel import AccelOptions, StreamShape, build_engines

    out = {}
    for i, cfg in enumerate(("none", "self", "initialize", "full")):
        shape = StreamShape.for_stream(SIZE, SIZE, STEPS, 1, cfg)
        which = ("unet", "vae_enc", "vae_dec", "text") if i == 0 else ("unet",)
        options = AccelOptions(exporter="dynamo" if i == 0 else "torchscript")
        done = build_engines(tiny_components, "onnxruntime", shape, accel_cache, which=which, options=options)
        out[cfg] = {entry.key.component: entry for entry, _ in done}
    for cfg in ("self", "initialize", "full"):
        for comp in ("vae_enc", "vae_dec", "text"):
            out[cfg][comp] = out["none"][comp]
    return out
