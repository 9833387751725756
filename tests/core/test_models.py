"""Model loading: a saved tiny model loads offline; missing weights give one clear error."""

from __future__ import annotations

import json

import pytest
import torch

from stream_core.models import (
    ModelLoadError,
    ModelNotFoundError,
    ModelSpec,
    load_components,
    needs_lcm_lora,
    resolve_device,
)


def test_tiny_model_loads_offline(tiny_model_dir, tiny_components):
    c = tiny_components
    assert type(c.vae).__name__ == "AutoencoderTiny"  # taesd default keeps the model's own TAESD
    assert c.info["lcm_lora"] is None
    assert c.device.type == "cpu" and c.dtype == torch.float32
    assert type(c.scheduler).__name__ == "LCMScheduler"
    # weights really come from disk: a second load is bit-identical
    again = load_components(ModelSpec(model=str(tiny_model_dir), device="cpu"))
    for (na, pa), (nb, pb) in zip(c.unet.state_dict().items(), again.unet.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)


def test_missing_hub_model_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as exc:
        load_components(ModelSpec(model="someone/not-a-real-model-xyz", device="cpu"))
    msg = str(exc.value)
    assert "someone/not-a-real-model-xyz" in msg and "--model" in msg
    assert "streambridge models fetch someone/not-a-real-model-xyz" in msg


def test_missing_model_never_asks_the_network_unless_allowed(monkeypatch):
    # no offline variable: the loader itself must still stay on the local cache
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from transformers import CLIPTokenizer

    calls: list[dict] = []

    def spy(source, **kwargs):
        calls.append(kwargs)
        raise OSError("not in the cache")

    monkeypatch.setattr(CLIPTokenizer, "from_pretrained", spy)
    with pytest.raises(ModelNotFoundError, match="streambridge models fetch someone/not-here"):
        load_components(ModelSpec(model="someone/not-here", device="cpu"))
    assert calls and all(c.get("local_files_only") is True for c in calls), calls
    calls.clear()
    with pytest.raises(ModelNotFoundError):
        load_components(ModelSpec(model="someone/not-here", device="cpu", allow_download=True))
    assert [c.get("local_files_only") for c in calls] == [True, None]  # asked for: cache, then the hub


def test_missing_taesd_offline_names_it(tiny_model_dir, tmp_path, monkeypatch):
    # a model whose own VAE is not TAESD needs madebyollin/taesd, which is not here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    copy = tmp_path / "m"
    import shutil

    shutil.copytree(tiny_model_dir, copy)
    idx = json.loads((copy / "model_index.json").read_text())
    idx["vae"] = ["diffusers", "AutoencoderKL"]
    (copy / "model_index.json").write_text(json.dumps(idx))
    with pytest.raises(ModelNotFoundError, match="madebyollin/taesd"):
        load_components(ModelSpec(model=str(copy), device="cpu"))


def test_not_a_folder_nor_hub_id():
    with pytest.raises(ModelNotFoundError, match="neither an existing folder"):
        load_components(ModelSpec(model="./no/such/folder/here", device="cpu"))


def test_broken_folder_is_a_load_error(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_components(ModelSpec(model=str(tmp_path), device="cpu"))


def test_lcm_lora_decision_is_config_based():
    class Cfg:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    sd15 = Cfg(cross_attention_dim=768, block_out_channels=[320, 640, 1280, 1280], time_cond_proj_dim=None)
    sd21 = Cfg(cross_attention_dim=1024, block_out_channels=[320, 640, 1280, 1280], time_cond_proj_dim=None)
    lcm15 = Cfg(cross_attention_dim=768, block_out_channels=[320, 640, 1280, 1280], time_cond_proj_dim=256)
    assert needs_lcm_lora(sd15, "PNDMScheduler")
    assert not needs_lcm_lora(sd15, "LCMScheduler")
    assert not needs_lcm_lora(sd21, "EulerDiscreteScheduler")  # sd-turbo
    assert not needs_lcm_lora(lcm15, "PNDMScheduler")


def test_device_resolution():
    dev, dt = resolve_device("cpu", "auto")
    assert dev.type == "cpu" and dt == torch.float32
    with pytest.raises(ValueError, match="float16 on the CPU"):
        resolve_device("cpu", "float16")
    with pytest.raises(ValueError, match="dtype"):
        resolve_device("cpu", "float8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda", "auto")


def test_device_resolution_on_apple_silicon(monkeypatch):
    """Without an NVIDIA GPU, ``auto`` takes the Apple GPU (MPS) in fp16 where torch has it; an
    explicit ``mps`` without it is an error, never a quiet move to the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto", "auto") == (torch.device("mps"), torch.float16)
    assert resolve_device("mps", "float32") == (torch.device("mps"), torch.float32)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto", "auto") == (torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="no Apple GPU"):
        resolve_device("mps", "auto")
