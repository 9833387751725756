"""Checks of meaning before the show: what a valid config still cannot do on this machine.

The schema (``bridge.config``) checks shape: types, ranges, HOST:PORT syntax. This module checks
the config against the machine, without loading a model or opening a backend: every frame
backend can run on this OS with its extra installed, the model (and the VAE / LoRAs it needs)
is in a local folder or the local Hugging Face cache, the device exists, the presets folder and
the ``initial`` preset are there, and the pipeline size suits the model's U-Net. Every problem is
reported at once, each located at the config file's line (or the command line).

Nothing here goes online or imports torch unless the config names a GPU device.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.config import DaemonConfig
from bridge.io._common import _PLATFORM_NAMES, install_hint
from stream_core.weights import LCM_LORA_SD15, TAESD_ID, how_to_provide, locate, looks_like_hub_id

__all__ = ["BACKEND_NEEDS", "Problem", "backend_problem", "backend_problems", "check", "format_problems"]

#: backend kind -> (Python module, extra to install, the only platform it exists on or None)
BACKEND_NEEDS: dict[str, tuple[str, str, str | None]] = {
    "ndi": ("NDIlib", "ndi", None),
    "spout": ("SpoutGL", "spout", "win32"),
    "syphon": ("syphon", "syphon", "darwin"),
    "virtualcam": ("pyvirtualcam", "virtualcam", None),
}


@dataclass(frozen=True)
class Problem:
    key: tuple[Any, ...]  # config key path, e.g. ("sinks", 0, "type")
    message: str


def _module_present(module: str) -> bool:
    if module in sys.modules:  # already imported (or injected, as the contract tests do)
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def backend_problem(kind: str, role: str) -> str | None:
    """Why backend ``kind`` cannot run here (OS, missing extra), or None. Does not import it."""
    need = BACKEND_NEEDS.get(kind)
    if need is None:
        return None
    module, extra, platform = need
    if _module_present(module):
        return None
    name = {"ndi": "NDI", "spout": "Spout", "syphon": "Syphon", "virtualcam": "The virtual camera"}[kind]
    if platform is not None and sys.platform != platform:
        where = _PLATFORM_NAMES.get(platform, platform)
        here = _PLATFORM_NAMES.get(sys.platform, sys.platform)
        alt = " (NDI works on every OS: ndi:NAME)" if kind in ("spout", "syphon") else ""
        return f"{name} {role}s exist only on {where} and this is {here}{alt}"
    return f"{name} needs the Python module '{module}': install it with {install_hint(extra)}"


def _backends(cfg: DaemonConfig) -> Iterable[Problem]:
    problem = backend_problem(cfg.source.type, "source")
    if problem:
        yield Problem(("source", "type"), problem)
    for i, sink in enumerate(cfg.sinks):
        problem = backend_problem(sink.type, "sink")
        if problem:
            yield Problem(("sinks", i, "type"), problem)
    if cfg.tempo.link and not _module_present("aalink"):
        yield Problem(("tempo", "link"), "Ableton Link needs the Python module 'aalink': install it with "
                      + install_hint("link"))
    for i, cn in enumerate(cfg.controlnets):
        if cn.source != "input":
            problem = backend_problem(cn.source.type, "source")
            if problem:
                yield Problem(("controlnets", i, "source"), f"control source: {problem}")


def backend_problems(cfg: DaemonConfig) -> list[str]:
    """``key: reason`` for every source/sink backend that cannot run here (cheap: no import)."""
    return [f"{'.'.join(map(str, p.key))}: {p.message}" for p in _backends(cfg)]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _weights(name: str, key: tuple[Any, ...], what: str, marker: str) -> tuple[Path | None, Problem | None]:
    folder = locate(name, marker)
    if folder is not None:
        return folder, None
    path = Path(name).expanduser()
    if path.is_dir():
        return None, Problem(key, f"{what} folder {name} has no {marker}: not a diffusers-format folder")
    if path.exists():
        return None, Problem(key, f"{what} {name} is a file, not a diffusers-format folder")
    if not looks_like_hub_id(name):
        return None, Problem(key, f"{what} '{name}' is neither an existing folder nor a hub id like 'org/name'")
    return None, Problem(key, f"{what}: {how_to_provide(name)}")


def _model(cfg: DaemonConfig) -> Iterable[Problem]:
    m = cfg.model
    folder, problem = _weights(m.model, ("model", "model"), "model", "model_index.json")
    if problem:
        yield problem
        return
    assert folder is not None
    index = _read_json(folder / "model_index.json")
    own_vae = (index.get("vae") or [None, None])[1]
    if m.vae == "taesd" and own_vae != "AutoencoderTiny":
        _, problem = _weights(TAESD_ID, ("model", "vae"), "TAESD VAE (vae: taesd)", "config.json")
        if problem:
            yield problem
    elif m.vae not in ("taesd", "full"):
        _, problem = _weights(m.vae, ("model", "vae"), "VAE", "config.json")
        if problem:
            yield problem
    unet = _read_json(folder / "unet" / "config.json")
    if m.lcm_lora == "auto":
        sched = (index.get("scheduler") or [None, None])[1]
        sd15 = (unet.get("cross_attention_dim") == 768 and tuple(unet.get("block_out_channels") or ())
                == (320, 640, 1280, 1280) and not unet.get("time_cond_proj_dim") and sched != "LCMScheduler")
        if sd15 and locate(LCM_LORA_SD15, "pytorch_lora_weights.safetensors") is None:
            yield Problem(("model", "lcm_lora"), f"LCM-LoRA (needed by this SD 1.x model): {how_to_provide(LCM_LORA_SD15)}")
    loras = [(("model", "loras", i, "source"), lora.source) for i, lora in enumerate(m.loras)]
    if m.lcm_lora not in ("auto", "none"):
        loras.insert(0, (("model", "lcm_lora"), m.lcm_lora))
    for key, source in loras:
        if Path(source).expanduser().exists():
            continue
        if not looks_like_hub_id(source):
            yield Problem(key, f"LoRA '{source}' is neither an existing file/folder nor a hub id")
        elif locate(source, "pytorch_lora_weights.safetensors") is None:
            yield Problem(key, f"LoRA: {how_to_provide(source)}")
    blocks = unet.get("block_out_channels")
    if isinstance(blocks, list) and blocks:
        multiple = 8 * 2 ** (len(blocks) - 1)  # the VAE's 8x, then one halving per U-Net level
        w, h = cfg.pipeline.size
        if w % multiple or h % multiple:
            fit = f"{max(multiple, w // multiple * multiple)}x{max(multiple, h // multiple * multiple)}"
            yield Problem(("pipeline", "size"), f"{w}x{h} does not suit this model: width and height must be "
                          f"multiples of {multiple} (its U-Net has {len(blocks)} levels); e.g. {fit}")


def _controlnets(cfg: DaemonConfig) -> Iterable[Problem]:
    """Each ControlNet's weights (a diffusers ControlNet folder: config.json) and, for ``depth``,
    the depth-estimation model's (a transformers folder: config.json) are on this machine."""
    for i, cn in enumerate(cfg.controlnets):
        _, problem = _weights(cn.model, ("controlnets", i, "model"), "ControlNet", "config.json")
        if problem:
            yield problem
        if cn.depth_model:
            _, problem = _weights(cn.depth_model, ("controlnets", i, "depth_model"), "depth model", "config.json")
            if problem:
                yield problem


def _device(cfg: DaemonConfig) -> Iterable[Problem]:
    device, dtype = cfg.model.device, cfg.model.dtype
    if device == "cpu" and dtype == "float16":
        yield Problem(("model", "dtype"), "float16 on the CPU is not supported; use float32 (or bfloat16)")
        return
    if device in ("auto", "cpu"):
        return
    try:
        from stream_core.models import resolve_device  # imports torch: only for a named GPU

        resolve_device(device, dtype)
    except ValueError as exc:
        yield Problem(("model", "device"), str(exc))


def _presets(cfg: DaemonConfig) -> Iterable[Problem]:
    folder = Path(cfg.presets.folder).expanduser()
    if not folder.is_dir():
        yield Problem(("presets", "folder"), f"presets folder {folder} does not exist (set presets.folder or --presets)")
        return
    name = cfg.presets.initial
    if name and not any((folder / f"{name}{ext}").is_file() for ext in (".yaml", ".yml")):
        have = sorted(p.stem for p in folder.glob("*.y*ml"))
        yield Problem(("presets", "initial"), f"preset {name!r} is not in {folder} "
                      f"(there: {', '.join(have[:12]) or 'none'}{', ...' if len(have) > 12 else ''})")


def _bind_problem(host: str, port: int, kind: int) -> str | None:
    """Why ``host:port`` cannot be bound now (resolved as the servers do), or None. The test
    socket is closed at once."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host or "127.0.0.1", port, type=kind)[0]
    except socket.gaierror as exc:
        return f"cannot resolve host {host!r}: {exc.strerror or exc}"
    with socket.socket(family, kind) as sock:
        if kind == socket.SOCK_STREAM:  # as the HTTP servers do: a TIME_WAIT port is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            return f"cannot listen on {host}:{port} ({exc.strerror or exc}); another program may hold it: " \
                   "choose another port (0 picks a free one)"
    return None


def _ports(cfg: DaemonConfig) -> Iterable[Problem]:
    osc_host, _, osc_port = cfg.osc.listen.rpartition(":")
    wanted: list[tuple[tuple[Any, ...], str, int, int]] = []
    if cfg.osc.enabled:
        wanted.append((("osc", "listen"), osc_host, int(osc_port), socket.SOCK_DGRAM))
        if cfg.osc.query_port:
            wanted.append((("osc", "query_port"), osc_host, cfg.osc.query_port, socket.SOCK_STREAM))
    if cfg.status.listen:
        host, _, port = cfg.status.listen.rpartition(":")
        wanted.append((("status", "listen"), host, int(port), socket.SOCK_STREAM))
    for key, host, port, kind in wanted:
        if port == 0:
            continue
        problem = _bind_problem(host, port, kind)
        if problem:
            yield Problem(key, problem)


def check(cfg: DaemonConfig, *, presets: bool = True, allow_download: bool = False,
          ports: bool = False) -> list[Problem]:
    """Every problem that would stop this config on this machine (empty: good to go). With
    ``allow_download`` weights missing here are not problems (they will be fetched); with
    ``ports`` the listen ports are tried (at start-up only: while a show runs its own ports are
    taken, so ``validate`` does not try them)."""
    problems: list[Problem] = []
    for part in (_backends, _device) if allow_download else (_backends, _model, _controlnets, _device):
        problems.extend(part(cfg))
    if presets:
        problems.extend(_presets(cfg))
    if ports:
        problems.extend(_ports(cfg))
    return problems


def format_problems(problems: Iterable[Problem], source: str, lines: Mapping[tuple[Any, ...], int] | None = None,
                    overridden: Iterable[str] = ()) -> list[str]:
    """``file:line: key 'a.b': message`` per problem; keys set by a flag say ``command line``."""
    lines = lines or {}
    flags = tuple(overridden)
    out = []
    for p in problems:
        dotted = ".".join(str(k) for k in p.key)
        if any(dotted == f or dotted.startswith(f + ".") or f.startswith(dotted + ".") for f in flags) \
                or source == "command line":
            where = "command line"
        else:
            line = None
            probe = p.key
            while probe and line is None:
                line = lines.get(probe)
                probe = probe[:-1]
            where = f"{source}:{line}" if line else source
        out.append(f"{where}: key '{dotted}': {p.message}")
    return out
