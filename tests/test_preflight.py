"""The checks of meaning run by `validate` and at start-up (bridge.preflight), in-process."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.config import DaemonConfig
from bridge.preflight import backend_problem, check, format_problems
from bridge.yamlio import load_yaml_text, validate

REPO = Path(__file__).resolve().parents[1]


def cfg(tiny: Path, **sections) -> DaemonConfig:
    data = {"model": {"model": str(tiny), "device": "cpu"}, "pipeline": {"size": "64x64"},
            "presets": {"folder": str(REPO / "presets")}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return DaemonConfig.model_validate(data)


def messages(c: DaemonConfig) -> dict[str, str]:
    return {".".join(map(str, p.key)): p.message for p in check(c)}


def test_a_good_config_has_no_problem(tiny_model_dir):
    assert check(cfg(tiny_model_dir)) == []


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "127.0.0.1:-1", "127.0.0.1", "127.0.0.1:port"])
def test_listen_ports_must_be_in_range(listen):
    with pytest.raises(ValidationError, match="osc.listen"):
        DaemonConfig.model_validate({"osc": {"listen": listen}})
    with pytest.raises(ValidationError, match="status.listen"):
        DaemonConfig.model_validate({"status": {"listen": listen}})


@pytest.mark.parametrize("target", ["localhost", "127.0.0.1:0", "127.0.0.1:65536"])
def test_feedback_targets_need_a_real_port(target):
    with pytest.raises(ValidationError, match="osc.feedback"):
        DaemonConfig.model_validate({"osc": {"feedback": [target]}})


def test_ndi_address_port_in_range():
    with pytest.raises(ValidationError, match="outside 1..65535"):
        DaemonConfig.model_validate({"source": {"type": "ndi", "address": "127.0.0.1:99999"}})


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="Spout/Syphon exist there")
def test_spout_and_syphon_are_errors_here_with_the_alternative(tiny_model_dir):
    c = cfg(tiny_model_dir, source={"type": "spout", "name": "TD"}, sinks=[{"type": "syphon"}, {"type": "null"}])
    found = messages(c)
    assert "Windows" in found["source.type"] and "ndi:NAME" in found["source.type"]
    assert "macOS" in found["sinks.0.type"]
    assert "sinks.1.type" not in found


def test_missing_extra_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)  # as if not installed
    assert 'pip install "streambridge[virtualcam]"' in backend_problem("virtualcam", "sink")
    assert backend_problem("pattern", "source") is None


def test_missing_model_says_how_to_fetch(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    found = messages(cfg(tiny_model_dir, model={"model": "someone/not-here"}))
    assert "streambridge models fetch someone/not-here" in found["model.model"]
    found = messages(cfg(tiny_model_dir, model={"model": str(tmp_path)}))
    assert "no model_index.json" in found["model.model"]


def test_taesd_needed_and_missing(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    copy = tmp_path / "m"
    shutil.copytree(tiny_model_dir, copy)
    idx = json.loads((copy / "model_index.json").read_text())
    idx["vae"] = ["diffusers", "AutoencoderKL"]
    (copy / "model_index.json").write_text(json.dumps(idx))
    found = messages(cfg(copy))
    assert "madebyollin/taesd" in found["model.vae"]
    assert "model.vae" not in messages(cfg(copy, model={"vae": "full"}))


def test_hub_id_in_the_local_cache_is_found(tiny_model_dir, tmp_path, monkeypatch):
    # the layout huggingface_hub itself writes: models--org--name/{refs/main, snapshots/<rev>/...}
    cache = tmp_path / "hub"
    repo = cache / "models--someone--cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    assert "model.model" not in messages(cfg(tiny_model_dir, model={"model": "someone/cached"}))


def test_size_must_suit_the_unet(tiny_model_dir):
    # the tiny U-Net has 2 levels: 8 (VAE) x 2 = multiples of 16
    found = messages(cfg(tiny_model_dir, pipeline={"size": "72x64"}))
    assert "multiples of 16" in found["pipeline.size"] and "64x64" in found["pipeline.size"]


def test_device_and_dtype(tiny_model_dir):
    import torch

    if not torch.cuda.is_available():
        assert "CUDA" in messages(cfg(tiny_model_dir, model={"device": "cuda"}))["model.device"]
    assert "float16" in messages(cfg(tiny_model_dir, model={"dtype": "float16"}))["model.dtype"]


def test_presets_folder_and_initial(tiny_model_dir, tmp_path):
    assert "does not exist" in messages(cfg(tiny_model_dir, presets={"folder": str(tmp_path / "x")}))["presets.folder"]
    found = messages(cfg(tiny_model_dir, presets={"initial": "no-such-look"}))
    assert "'no-such-look' is not in" in found["presets.initial"] and "ink-wash" in found["presets.initial"]
    assert "presets.initial" not in messages(cfg(tiny_model_dir, presets={"initial": "ink-wash"}))


def test_problems_are_located_at_the_file_line_or_the_flag(tiny_model_dir):
    text = f"model:\n  model: '{tiny_model_dir}'\n  device: cpu\nsource:\n  type: spout\n"
    data, lines = load_yaml_text(text, "show.yaml")
    c = validate(DaemonConfig, data, "show.yaml", lines)
    problems = [p for p in check(c, presets=False) if p.key == ("source", "type")]
    if sys.platform != "win32":
        assert format_problems(problems, "show.yaml", lines)[0].startswith("show.yaml:5: key 'source.type': ")
        assert format_problems(problems, "show.yaml", lines, ["source"])[0].startswith("command line: key 'source.type'")


def test_loras_must_be_here(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"x")
    found = messages(cfg(tiny_model_dir, model={"lcm_lora": "org/lcm-not-here",
                                                "loras": [{"source": str(lora)}, {"source": "org/style-not-here"},
                                                          {"source": "./no/such.safetensors"}]}))
    assert "streambridge models fetch org/lcm-not-here" in found["model.lcm_lora"]
    assert "model.loras.0.source" not in found
    assert "streambridge models fetch org/style-not-here" in found["model.loras.1.source"]
    assert "neither an existing file/folder nor a hub id" in found["model.loras.2.source"]


def test_ports_taken_by_another_program_are_found_at_startup(tiny_model_dir):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind(("127.0.0.1", 0))
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(1)
        c = cfg(tiny_model_dir, osc={"listen": f"127.0.0.1:{udp.getsockname()[1]}"},
                status={"listen": f"127.0.0.1:{tcp.getsockname()[1]}"})
        assert check(c) == []  # validate does not try ports (a running show holds its own)
        found = {".".join(map(str, p.key)): p.message for p in check(c, ports=True)}
        assert "cannot listen on 127.0.0.1:" in found["osc.listen"] and "another port" in found["osc.listen"]
        assert "status.listen" in found
    assert check(cfg(tiny_model_dir, osc={"listen": "127.0.0.1:0"}), ports=True) == []
    bad_host = check(cfg(tiny_model_dir, osc={"listen": "no-such-host.invalid:9400"}), ports=True)
    assert [p.key for p in bad_host] == [("osc", "listen")] and "cannot resolve" in bad_host[0].message
