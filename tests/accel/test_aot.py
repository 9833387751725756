"""compile_mode aot: AOTInductor packages, compiled once and loaded by later runners.

Runs on the CPU (AOTInductor writes C++ there, so it needs the C++ compiler this machine has); a
small convolution stands in for the U-Net so the test stays quick. The GPU figures (warm start of
sd-turbo) come from ``bench/gpu.py --variants aot`` on a GPU machine.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from stream_core.accel.aot import AotCall
from stream_core.accel.errors import BackendUnavailableError

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="AOTInductor on the CPU needs a C++ compiler")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(),
                               torch.nn.Conv2d(8, 4, 3, padding=1)).eval()


def test_compiled_once_then_loaded_with_the_same_result(tmp_path, monkeypatch):
    model = _model()
    x = torch.randn(2, 4, 8, 8)
    with torch.inference_mode():
        ref = model(x)
        first = AotCall(lambda t: model(t) * 2.0, "body", [model], tmp_path)
        out1 = first(x)
    assert first.origin == "compiled" and (tmp_path / "body.pt2").is_file()
    torch.testing.assert_close(out1, ref * 2.0, rtol=1e-5, atol=1e-5)

    # a later runner (a new process, in the daemon) loads the package: nothing is traced or compiled
    def no_compile(*a, **k):
        raise AssertionError("compiled again although the package exists")

    monkeypatch.setattr(torch.export, "export", no_compile)
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compile)
    with torch.inference_mode():
        second = AotCall(lambda t: model(t) * 2.0, "body", [model], tmp_path)
        out2 = second(x + 1.0)
    assert second.origin == "loaded"
    torch.testing.assert_close(out2, ref_plus := model(x + 1.0).detach() * 2.0, rtol=1e-5, atol=1e-5)
    assert ref_plus.shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="compiled ahead of time for"):
        second(torch.randn(1, 4, 8, 8))  # static shapes


def test_a_damaged_package_is_an_error_naming_it(tmp_path):
    (tmp_path / "body.pt2").write_bytes(b"not a package")
    model = _model()
    call = AotCall(model, "body", [model], tmp_path)
    with pytest.raises(BackendUnavailableError, match="body.pt2 cannot be loaded.*delete it"):
        call(torch.randn(1, 4, 8, 8))


def test_no_folder_is_an_error_not_a_temporary_compile():
    model = _model()
    with pytest.raises(BackendUnavailableError, match="no folder"):
        AotCall(model, "body", [model])(torch.randn(1, 4, 8, 8))


def test_the_compile_runner_routes_its_three_calls_through_packages(tmp_path):
    """compile_mode aot gives the U-Net, encode and decode calls each their own package in the
    folder build_runner sets (the key's folder), and says where they came from."""
    from stream_core.accel.compiled import CompiledRunner

    class Unet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x, t, encoder_hidden_states=None, return_dict=False):
            return (self.conv(x) + encoder_hidden_states.mean() + t.float().mean() * 0.0,)

    class Vae(torch.nn.Module):  # TAESD's interface: .encode(x).latents, .decode(z)[0], a config
        config = type("Config", (), {"scaling_factor": 1.0})()

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def encode(self, x):
            return type("Out", (), {"latents": self.conv(x)})()

        def decode(self, z, return_dict=False):
            return (self.conv(z),)

    unet = Unet().eval()
    vae = Vae().eval()
    runner = CompiledRunner(unet, vae, compile_mode="aot", cuda_graphs=False)
    assert [c.name for c in runner._aot] == ["unet", "vae_enc", "vae_dec"]
    assert runner.aot_origin is None
    runner.set_package_folder(tmp_path)
    lat, t, emb = torch.randn(2, 4, 8, 8), torch.tensor([999, 500]), torch.randn(2, 3, 5)
    out = runner.unet(lat, t, emb)
    torch.testing.assert_close(out, unet(lat, t, encoder_hidden_states=emb)[0].detach(), rtol=1e-5, atol=1e-5)
    assert (tmp_path / "unet.pt2").is_file() and runner._aot[0].origin == "compiled"
    assert runner.aot_origin is None  # encode/decode not called yet
