"""`streambridge models fetch`: the one command that downloads (checked against a stand-in for
huggingface_hub's snapshot_download: no real download is possible here), and every other
command stays offline."""

from __future__ import annotations

import json
import os

import pytest

from bridge.cli import build_parser, main, stay_offline

SD15_UNET = {"cross_attention_dim": 768, "block_out_channels": [320, 640, 1280, 1280]}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake hub: repo id -> (file list, model_index, unet config); records each download."""
    import huggingface_hub

    repos: dict[str, tuple[list[str], dict | None, dict | None]] = {}
    calls: list[tuple[str, dict]] = []

    def list_repo_files(self, repo_id, revision=None, **kw):
        if repo_id not in repos:
            raise OSError(f"404 {repo_id}")
        return repos[repo_id][0]

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        folder = tmp_path / repo_id.replace("/", "--")
        folder.mkdir(parents=True, exist_ok=True)
        _, index, unet = repos[repo_id]
        if index is not None:
            (folder / "model_index.json").write_text(json.dumps(index))
        if unet is not None:
            (folder / "unet").mkdir(exist_ok=True)
            (folder / "unet" / "config.json").write_text(json.dumps(unet))
        return str(folder)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return repos, calls


def test_fetch_downloads_the_model_and_what_it_needs(hub):
    repos, calls = hub
    files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
             "unet/diffusion_pytorch_model.fp16.safetensors", "v1-5-pruned.safetensors"]
    repos["org/sd15"] = (files, {"vae": ["diffusers", "AutoencoderKL"],
                                 "scheduler": ["diffusers", "PNDMScheduler"]}, SD15_UNET)
    repos["madebyollin/taesd"] = (["config.json", "diffusion_pytorch_model.safetensors"], None, None)
    repos["latent-consistency/lcm-lora-sdv1-5"] = (["pytorch_lora_weights.safetensors"], None, None)
    assert main(["models", "fetch", "org/sd15", "--revision", "v2"]) == 0
    assert [c[0] for c in calls] == ["org/sd15", "madebyollin/taesd", "latent-consistency/lcm-lora-sdv1-5"]
    kw = calls[0][1]
    assert kw["revision"] == "v2"
    assert "*/*.safetensors" in kw["allow_patterns"] and "model_index.json" in kw["allow_patterns"]
    assert "*.fp16.*" in kw["ignore_patterns"]
    # no root single-file checkpoint: every allowed pattern but model_index.json is inside a folder
    assert all("/" in p for p in kw["allow_patterns"] if p != "model_index.json")


def test_fetch_no_deps_and_errors(hub, caplog):
    repos, calls = hub
    repos["org/turbo"] = (["model_index.json", "unet/diffusion_pytorch_model.bin"],
                          {"vae": ["diffusers", "AutoencoderKL"]}, {"cross_attention_dim": 1024})
    assert main(["models", "fetch", "org/turbo", "--no-deps"]) == 0
    assert [c[0] for c in calls] == ["org/turbo"] and "*/*.bin" in calls[0][1]["allow_patterns"]
    assert main(["models", "fetch", "org/missing"]) == 1
    assert "cannot fetch org/missing" in caplog.text
    assert main(["models", "fetch", "not-a-hub-id"]) == 2


def test_fetch_refuses_while_offline_is_forced(hub, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "fetch", "org/x"]) == 1
    assert "HF_HUB_OFFLINE" in caplog.text and not hub[1]


@pytest.mark.parametrize("argv, offline", [
    (["run"], "1"), (["validate", "x.yaml"], "1"), (["render", "a", "b"], "1"),
    (["run", "--allow-download"], None), (["models", "fetch", "org/x"], None),
])
def test_every_other_command_runs_offline(monkeypatch, argv, offline):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    stay_offline(build_parser().parse_args(argv))
    assert os.environ.get("HF_HUB_OFFLINE") == offline
    if offline is None:
        return
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # set by the user either way: left as it is
    stay_offline(build_parser().parse_args(argv))
    assert os.environ["HF_HUB_OFFLINE"] == "0"


