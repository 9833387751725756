"""Loading the diffusion components from a local diffusers folder or a hub id, offline-first.

Decisions are taken from the model's configuration, never from a substring of its name:
* the VAE: ``taesd`` (default) uses the model's own VAE when it already is an ``AutoencoderTiny``,
  otherwise loads TAESD (``madebyollin/taesd``); ``full`` keeps the model's own VAE; anything else
  is a folder or hub id of an ``AutoencoderTiny`` or ``AutoencoderKL``.
* LCM-LoRA (``lcm_lora: auto``): fused when the U-Net is an SD1.x-family U-Net (cross-attention
  width 768, blocks 320/640/1280/1280) that is not already consistency-distilled (no
  ``time_cond_proj_dim``, scheduler not LCM). sd-turbo (SD 2.1 U-Net, adversarially distilled)
  and the tiny test model need none.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stream_core.weights import LCM_LORA_SD15, TAESD_ID, how_to_provide, looks_like_hub_id

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stabilityai/sd-turbo"
__all__ = ["DEFAULT_MODEL", "LCM_LORA_SD15", "TAESD_ID", "load_components"]


class ModelNotFoundError(RuntimeError):
    """The weights are not on this machine (and could not be fetched). Message says what to do."""


class ModelLoadError(RuntimeError):
    """The weights are there but cannot be used (wrong layout, corrupt file, missing extra)."""


@dataclass(frozen=True)
class LoraSpec:
    source: str  # folder, .safetensors file or hub id
    scale: float = 1.0


@dataclass
class ModelSpec:
    model: str = DEFAULT_MODEL
    vae: str = "taesd"  # taesd | full | folder / hub id
    lcm_lora: str = "auto"  # auto | none | folder / hub id
    loras: Sequence[LoraSpec] = ()
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    # False (the default): only a local folder or the local hub cache, never the network
    allow_download: bool = False


@dataclass
class Components:
    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler: Any
    device: torch.device
    dtype: torch.dtype
    info: dict[str, Any] = field(default_factory=dict)
    #: ControlNets (``stream_core.controlnet.LoadedControlNet``) in config order
    controlnets: list[Any] = field(default_factory=list)


def mps_available() -> bool:
    """An Apple-silicon GPU usable through torch's MPS backend (macOS 12.3+)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """``auto``: CUDA with fp16 when an NVIDIA GPU is present, else Apple's MPS with fp16 on Apple
    silicon, else CPU with fp32."""
    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"device should be auto, cpu, cuda, cuda:N or mps but is {device!r}") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} asked for, but this torch build sees no CUDA GPU "
                f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch"
            )
        if dev.type == "mps" and not mps_available():
            raise ValueError(
                f"device {device!r} asked for, but this torch sees no Apple GPU (MPS needs Apple silicon and "
                f"macOS 12.3+; torch {torch.__version__}); use --device cpu"
            )
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        dt = torch.float16 if dev.type in ("cuda", "mps") else torch.float32
    elif dtype in names:
        dt = names[dtype]
    else:
        raise ValueError(f"dtype should be auto, float32, float16 or bfloat16 but is {dtype!r}")
    if dev.type == "cpu" and dt == torch.float16:
        raise ValueError("float16 on the CPU is not supported; use --dtype float32 (or bfloat16)")
    return dev, dt


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_hub_id(s: str) -> bool:
    return looks_like_hub_id(s)


def _how_to_provide(name: str) -> str:
    return how_to_provide(name)


def _from_pretrained(loader: Any, source: str, what: str, *, allow_download: bool = False, **kwargs: Any) -> Any:
    """Local folder or hub cache; the network only when ``allow_download`` (and HF_HUB_OFFLINE is
    not set) and the cache misses. Without it a miss fails at once with one message."""
    path = Path(source).expanduser()
    if path.exists():
        try:
            return loader.from_pretrained(str(path), local_files_only=True, **kwargs)
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"cannot load {what} from {path}: {_first_line(exc)}") from None
    if not _looks_like_hub_id(source):
        raise ModelNotFoundError(f"{what} '{source}' is neither an existing folder nor a hub id like 'org/name'")
    try:
        return loader.from_pretrained(source, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        if not allow_download or _offline():
            raise ModelNotFoundError(f"{what}: {_how_to_provide(source)}") from None
    log.info("downloading %s (%s): downloads were allowed", source, what)
    try:
        return loader.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise ModelNotFoundError(f"{what}: {_how_to_provide(source)} ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _read_model_index(source: str) -> dict[str, Any] | None:
    p = Path(source).expanduser() / "model_index.json"
    if p.is_file():
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
    return None


def needs_lcm_lora(unet_config: Any, scheduler_class: str | None) -> bool:
    """True for SD1.x-family U-Nets that are not already LCM-distilled (config-based)."""
    if scheduler_class == "LCMScheduler":
        return False
    if getattr(unet_config, "time_cond_proj_dim", None):
        return False
    blocks = tuple(getattr(unet_config, "block_out_channels", ()) or ())
    return int(getattr(unet_config, "cross_attention_dim", 0) or 0) == 768 and blocks == (320, 640, 1280, 1280)


def load_components(spec: ModelSpec, controlnets: Sequence[Any] = ()) -> Components:
    """Load tokenizer, text encoder, U-Net, VAE and an LCM scheduler for ``spec``, and the
    ControlNets (``stream_core.controlnet.ControlNetSpec``, in order) with their depth models."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    # the libraries' own chatter (progress bars, casting notes) is noise in a show log
    d_level, t_level = dlog.get_verbosity(), tlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        comps = _load_components(spec)
        if controlnets:
            comps = with_controlnets(comps, controlnets, allow_download=spec.allow_download)
        return comps
    finally:
        dlog.set_verbosity(d_level)
        tlog.set_verbosity(t_level)
        if bars:
            tlog.enable_progress_bar()


def _load_components(spec: ModelSpec) -> Components:
    from diffusers import AutoencoderKL, AutoencoderTiny, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    device, dtype = resolve_device(spec.device, spec.dtype)
    src = spec.model
    dl = spec.allow_download
    log.info("loading model %s on %s (%s)", src, device, str(dtype).replace("torch.", ""))
    tokenizer = _from_pretrained(CLIPTokenizer, src, "tokenizer", allow_download=dl, subfolder="tokenizer")
    text_encoder = _from_pretrained(CLIPTextModel, src, "text encoder", allow_download=dl, subfolder="text_encoder")
    unet = _from_pretrained(UNet2DConditionModel, src, "U-Net", allow_download=dl, subfolder="unet")
    base_sched = _from_pretrained(LCMScheduler, src, "scheduler", allow_download=dl, subfolder="scheduler")
    scheduler = LCMScheduler.from_config(base_sched.config)
    index = _read_model_index(src) or {}
    orig_sched_class = (index.get("scheduler") or [None, None])[1]

    vae_choice = spec.vae
    if vae_choice in ("taesd", "full"):
        own_vae_class = (index.get("vae") or [None, None])[1]
        if vae_choice == "full" or own_vae_class == "AutoencoderTiny":
            cls = AutoencoderTiny if own_vae_class == "AutoencoderTiny" else AutoencoderKL
            vae = _from_pretrained(cls, src, "VAE", subfolder="vae", allow_download=dl)
            vae_name = f"{src}/vae"
        else:
            vae = _from_pretrained(AutoencoderTiny, TAESD_ID, "TAESD VAE", allow_download=dl)
            vae_name = TAESD_ID
    else:
        vae_cfg = Path(vae_choice).expanduser() / "config.json"
        cls = AutoencoderTiny
        if vae_cfg.is_file():
            try:
                if json.loads(vae_cfg.read_text(encoding="utf-8")).get("_class_name") == "AutoencoderKL":
                    cls = AutoencoderKL
            except (OSError, json.JSONDecodeError) as exc:
                raise ModelLoadError(f"cannot read {vae_cfg}: {exc}") from None
        vae = _from_pretrained(cls, vae_choice, "VAE", allow_download=dl)
        vae_name = vae_choice

    lcm_source: str | None = None
    if spec.lcm_lora == "auto":
        if needs_lcm_lora(unet.config, orig_sched_class):
            lcm_source = LCM_LORA_SD15
    elif spec.lcm_lora != "none":
        lcm_source = spec.lcm_lora

    loras = list(spec.loras)
    if lcm_source or loras:
        _fuse_loras(tokenizer, text_encoder, unet, vae, scheduler, lcm_source, loras, dl)

    for m in (text_encoder, unet, vae):
        m.to(device=device, dtype=dtype)
        m.eval()
        m.requires_grad_(False)
    info = {
        "model": src,
        "vae": vae_name,
        "vae_class": type(vae).__name__,
        "lcm_lora": lcm_source,
        "loras": [(lo.source, lo.scale) for lo in loras],
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "cross_attention_dim": int(unet.config.cross_attention_dim),
    }
    return Components(tokenizer, text_encoder, unet, vae, scheduler, device, dtype, info)


def _fuse_loras(tokenizer, text_encoder, unet, vae, scheduler, lcm_source, loras, allow_download=False) -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ModelLoadError("LoRAs need the 'peft' package: pip install peft") from None
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    names: list[str] = []
    weights: list[float] = []
    items = ([("lcm", lcm_source, 1.0)] if lcm_source else []) + [
        (f"lora{i}", lo.source, float(lo.scale)) for i, lo in enumerate(loras)
    ]
    for name, source, scale in items:
        p = Path(source).expanduser()
        kwargs: dict[str, Any] = {"adapter_name": name}
        if p.is_file():
            load_from: str = str(p.parent)
            kwargs["weight_name"] = p.name
        else:
            load_from = str(p) if p.exists() else source
        if not p.exists() and not _looks_like_hub_id(source):
            raise ModelNotFoundError(f"LoRA '{source}' is neither an existing file/folder nor a hub id")
        try:
            pipe.load_lora_weights(load_from, local_files_only=not allow_download or _offline() or p.exists(), **kwargs)
        except (OSError, ValueError) as exc:
            if p.exists():
                raise ModelLoadError(f"cannot load LoRA {source}: {_first_line(exc)}") from None
            raise ModelNotFoundError(f"LoRA: {_how_to_provide(source)}") from None
        names.append(name)
        weights.append(scale)
        log.info("LoRA %s (%s) scale %.3g", name, source, scale)
    pipe.set_adapters(names, adapter_weights=weights)
    pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()


def with_controlnets(components: Components, specs: Sequence[Any], *, allow_download: bool = False) -> Components:
    """``components`` with exactly the ControlNets of ``specs`` (``ControlNetSpec``, in order):
    already loaded ones with the same model, preprocessor and depth model are reused, the others
    are loaded (offline-first) on the components' device and dtype. Returns a new object."""
    import dataclasses

    from stream_core.controlnet import ControlNetSpec, LoadedControlNet

    if not specs and not getattr(components, "controlnets", None):
        return components
    have = {lc.spec.cold_key: lc for lc in components.controlnets}
    loaded: list[Any] = []
    for spec in specs:
        if not isinstance(spec, ControlNetSpec):
            raise TypeError(f"controlnets should be ControlNetSpec objects, got {type(spec).__name__}")
        spec.check()
        old = have.get(spec.cold_key)
        if old is not None:
            loaded.append(LoadedControlNet(spec, old.model, old.depth))
        else:
            loaded.append(load_controlnet(spec, components.unet, components.device, components.dtype,
                                          allow_download=allow_download))
    info = dict(components.info)
    info["controlnets"] = [(lc.spec.model, lc.spec.preprocessor) for lc in loaded]
    return dataclasses.replace(components, controlnets=loaded, info=info)


def load_controlnet(spec: Any, unet: Any, device: torch.device, dtype: torch.dtype, *,
                    allow_download: bool = False) -> Any:
    """One ``LoadedControlNet``: the diffusers ``ControlNetModel`` (checked against ``unet``) and,
    for the ``depth`` preprocessor, its transformers depth-estimation model."""
    from diffusers import ControlNetModel

    from stream_core.controlnet import LoadedControlNet, check_compatible

    spec.check()
    log.info("loading ControlNet %s (preprocessor %s)", spec.model, spec.preprocessor)
    model = _from_pretrained(ControlNetModel, spec.model, f"ControlNet {spec.model}", allow_download=allow_download)
    try:
        check_compatible(unet, model, spec.model)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    depth = None
    if spec.preprocessor == "depth":
        depth = load_depth_model(spec.depth_model, device, dtype, allow_download=allow_download)
    return LoadedControlNet(spec, model, depth)


def load_depth_model(source: str, device: torch.device, dtype: torch.dtype, *, allow_download: bool = False) -> Any:
    """A transformers depth-estimation model (DPT, Depth Anything, ...) as a ``DepthEstimator``."""
    from transformers import AutoModelForDepthEstimation

    from stream_core.controlnet import DepthEstimator

    model = _from_pretrained(AutoModelForDepthEstimation, source, f"depth model {source}", allow_download=allow_download)
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    folder: Path | None = Path(source).expanduser()
    if not folder.is_dir():
        folder = None
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "preprocessor_config.json")
            if isinstance(cached, str):
                folder = Path(cached).parent
        except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
            pass
    return DepthEstimator.from_folder(model, folder, source)
