"""Presets: named looks in ``presets/*.yaml`` that a VJ recalls mid-show.

* :class:`Preset` is the schema. *Hot* fields are live parameters (their types and ranges come from
  :data:`bridge.params.PARAMS`, the same table OSC uses); a preset sets only the keys it names.
  *Cold* fields describe the pipeline the preset was made for (model, size, steps, ...); a
  preset whose cold fields differ from the running pipeline is refused on recall, never a rebuild
  (see :meth:`Preset.cold_conflicts`).
* :class:`PresetStore` loads a folder, keeps the last good version of every preset, hot-reloads by
  polling the folder (editors save by rename) and saves atomically.
* Files are parsed by :mod:`bridge.yamlio` (no aliases, size cap, located errors); on top of that,
  YAML 1.1 traps (``prompt: NO`` read as ``False``, ``seed: 12:30`` read as 750, ``010`` read as 8,
  a key ``on:`` read as ``True``) are reported with the file, line and key instead of slipping in.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bridge.lfo import LFO_TARGETS, MAX_DEPTH, MAX_RATE, MIN_RATE, SHAPES, Lfo
from bridge.params import CANNY_MAX, MAX_CONTROLNETS, MAX_PROMPT_CHARS, PARAMS
from bridge.yamlio import (
    MAX_YAML_BYTES,
    ConfigError,
    PathKey,
    atomic_write_text,
    load_yaml_text,
    validate,
)

log = logging.getLogger("streambridge.presets")

#: Live parameters a preset may set, in the order they are written when saving.
HOT_FIELDS: tuple[str, ...] = (
    "prompt",
    "negative_prompt",
    "prompt_a",
    "prompt_b",
    "prompt_mix",
    "strength",
    "guidance",
    "delta",
    "seed",
    "seed_b",
    "seed_mix",
    "filter_threshold",
    "smoothing",
    "temporal_cache",
    "temporal_frames",
    "temporal_interval",
    "temporal_injection",
    "latent_feedback",
    "mix",
    "transition",
    "transition_beats",
)
#: Fields that need a pipeline rebuild; a preset naming a different value is refused on recall.
COLD_FIELDS: tuple[str, ...] = ("model", "vae", "size", "steps", "frame_buffer", "cfg", "acceleration")
#: Hot fields that hold prompt text (what the prompt cache pre-encodes).
PROMPT_FIELDS: tuple[str, ...] = ("prompt", "negative_prompt", "prompt_a", "prompt_b")

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
NAME_RULE = "1-64 characters: letters A-Z a-z, digits, '_' and '-'"
PRESET_SUFFIXES: tuple[str, ...] = (".yaml", ".yml")  # .yaml wins when both exist
MAX_DESCRIPTION_CHARS = 1000
MAX_MODEL_ID_CHARS = 300
SIZE_RE = re.compile(r"([0-9]{2,5})x([0-9]{2,5})")
SIZE_MIN, SIZE_MAX, SIZE_MULTIPLE = 64, 2048, 8
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in range(1, 10)] + [f"LPT{i}" for i in range(1, 10)]
)

CfgType = Literal["none", "full", "self", "initialize"]
LfoShape = Literal["sine", "triangle", "saw", "square", "random"]
LfoTarget = Literal["prompt_mix", "strength", "guidance", "delta", "seed_mix", "mix", "filter_threshold", "smoothing"]
assert get_args(LfoTarget) == LFO_TARGETS and get_args(LfoShape) == SHAPES
AccelerationType = Literal["auto", "none", "compile", "tensorrt", "onnxruntime"]


def _hot(name: str) -> Any:
    """A pydantic Field for hot parameter ``name``, bounded by its :class:`ParamSpec`."""
    spec = PARAMS[name]
    kwargs: dict[str, Any] = {}
    if spec.kind is str:
        kwargs["max_length"] = MAX_PROMPT_CHARS
        rng = f"text, up to {MAX_PROMPT_CHARS} characters"
    elif spec.kind is bool:
        rng = "true/false"
    else:
        kwargs["ge"] = spec.lo
        kwargs["le"] = spec.hi
        if spec.kind is float:
            kwargs["allow_inf_nan"] = False
        rng = f"{spec.kind.__name__} {spec.lo:g}..{spec.hi:g}"
    return Field(
        default=None,
        strict=True,
        description=f"{spec.doc} ({rng}; live default {spec.default!r}; OSC {spec.address})",
        **kwargs,
    )


def _check_text(value: str, what: str, limit: int) -> str:
    if len(value) > limit:
        raise ValueError(f"{what} is longer than {limit} characters")
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character")
    return value


@dataclass(frozen=True)
class ControlNetCold:
    """What one running ControlNet was built with. ``source`` is ``"input"`` or the second
    source's config as a plain dict (``model_dump()``), for comparison."""

    model: str
    preprocessor: str
    source: Any = "input"


@dataclass(frozen=True)
class ColdSettings:
    """What the *running* pipeline was built with (filled in by the daemon)."""

    model: str
    vae: str | None
    size: tuple[int, int]  # (width, height)
    steps: int
    frame_buffer: int
    cfg: str
    acceleration: str
    controlnets: tuple[ControlNetCold, ...] = ()


def source_key(source: Any) -> Any:
    """``"input"``, or a source (a spec like ``ndi:TD Depth``, a mapping or a source config) as
    a comparable dict. ValueError for a bad spec."""
    if isinstance(source, str) and source.strip().lower() == "input":
        return "input"
    from bridge.io.registry import parse_source_config, parse_source_spec

    if isinstance(source, str):
        cfg = parse_source_spec(source)
    elif isinstance(source, dict):
        cfg = parse_source_config(source)
    else:
        cfg = source
    return cfg.model_dump()


class CannyPreset(BaseModel):
    """Canny thresholds of one ControlNet in a preset (hot)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float | None = Field(default=None, ge=0.0, le=CANNY_MAX, allow_inf_nan=False,
                              description=f"canny low threshold, 0..{CANNY_MAX:g} (OSC /sd/controlnet/<i>/canny/low)")
    high: float | None = Field(default=None, ge=0.0, le=CANNY_MAX, allow_inf_nan=False,
                               description=f"canny high threshold, 0..{CANNY_MAX:g} (OSC /sd/controlnet/<i>/canny/high)")

    @field_validator("low", "high", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not (value is None or isinstance(value, (int, float))):
            raise ValueError(f"expected a number, got {value!r}")
        return value


class ControlNetPreset(BaseModel):
    """One entry of a preset's ``controlnets:`` list (the ControlNet at that position in the
    config). Hot: scale, enabled, canny. Cold: model, preprocessor, source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float | None = Field(default=None, strict=True, ge=0.0, le=2.0, allow_inf_nan=False,
                                description="conditioning scale 0..2 (OSC /sd/controlnet/<i>/scale); morphed")
    enabled: bool | None = Field(default=None, strict=True, description="on/off (OSC /sd/controlnet/<i>/enabled)")
    canny: CannyPreset | None = Field(default=None, description="canny thresholds (canny ControlNets only)")
    model: str | None = Field(default=None, strict=True, min_length=1, max_length=MAX_MODEL_ID_CHARS,
                              description="the ControlNet model the preset was made for (cold)")
    preprocessor: Literal["none", "canny", "depth"] | None = Field(default=None, description="(cold)")
    source: str | None = Field(default=None, strict=True, min_length=1, max_length=300,
                               description="input, or the control source's spec like ndi:TD Depth (cold)")

    @field_validator("scale", mode="before")
    @classmethod
    def _int_scale(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("source", mode="after")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        if value is not None:
            source_key(value)  # ValueError naming the bad spec
        return value


def parse_size(text: str) -> tuple[int, int]:
    """``"512x768"`` -> ``(512, 768)``; ValueError with a reason otherwise."""
    m = SIZE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"size must be WIDTHxHEIGHT, e.g. 512x512 (got {text!r})")
    w, h = int(m.group(1)), int(m.group(2))
    for label, v in (("width", w), ("height", h)):
        if not SIZE_MIN <= v <= SIZE_MAX:
            raise ValueError(f"{label} {v} is outside {SIZE_MIN}..{SIZE_MAX}")
        if v % SIZE_MULTIPLE:
            raise ValueError(f"{label} {v} is not a multiple of {SIZE_MULTIPLE}")
    return w, h


class LfoSettings(BaseModel):
    """One LFO in a preset's ``lfos:`` mapping (see :mod:`bridge.lfo`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: LfoShape = Field("sine", description="sine | triangle | saw | square | random (smooth random)")
    rate: float = Field(4.0, ge=MIN_RATE, le=MAX_RATE, allow_inf_nan=False,
                        description="cycle length in beats with sync (1: every beat, 4: every 4/4 bar), else Hz")
    sync: bool = Field(True, strict=True, description="follow the tempo (rate in beats) or run free (rate in Hz)")
    depth: float | None = Field(None, ge=0.0, le=MAX_DEPTH, allow_inf_nan=False,
                                description="peak deviation in the parameter's own units")
    depth_norm: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False,
                                     description="peak deviation as a fraction of the parameter's control range")
    phase: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False, description="phase offset in cycles, 0..1")
    enabled: bool = Field(True, strict=True, description="on/off")

    @model_validator(mode="after")
    def _one_depth(self) -> LfoSettings:
        if self.depth is not None and self.depth_norm is not None:
            raise ValueError("give depth (parameter units) or depth_norm (fraction of the control range), not both")
        return self

    def to_lfo(self, param: str) -> Lfo:
        return Lfo.from_fields(param, self.model_dump())

    @classmethod
    def from_lfo(cls, lfo: Lfo) -> LfoSettings:
        return cls.model_validate(lfo.fields())


class Preset(BaseModel):
    """One preset file. Every key is optional: recalling a preset changes only what it names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str | None = Field(
        default=None,
        strict=True,
        max_length=MAX_DESCRIPTION_CHARS,
        description=f"free text shown by `streambridge presets list` (up to {MAX_DESCRIPTION_CHARS} characters)",
    )

    # hot: applied live, morphed over `transition` seconds
    prompt: str | None = _hot("prompt")
    negative_prompt: str | None = _hot("negative_prompt")
    prompt_a: str | None = _hot("prompt_a")
    prompt_b: str | None = _hot("prompt_b")
    prompt_mix: float | None = _hot("prompt_mix")
    strength: float | None = _hot("strength")
    guidance: float | None = _hot("guidance")
    delta: float | None = _hot("delta")
    seed: int | None = _hot("seed")
    seed_b: int | None = _hot("seed_b")
    seed_mix: float | None = _hot("seed_mix")
    filter_threshold: float | None = _hot("filter_threshold")
    smoothing: float | None = _hot("smoothing")
    temporal_cache: bool | None = _hot("temporal_cache")
    temporal_frames: int | None = _hot("temporal_frames")
    temporal_interval: int | None = _hot("temporal_interval")
    temporal_injection: float | None = _hot("temporal_injection")
    latent_feedback: float | None = _hot("latent_feedback")
    mix: float | None = _hot("mix")
    transition: float | None = _hot("transition")
    transition_beats: float | None = _hot("transition_beats")
    lfos: dict[LfoTarget, LfoSettings] | None = Field(
        default=None,
        description="LFOs by parameter name (" + ", ".join(LFO_TARGETS) + "); a recall replaces every running "
        "LFO with these ({} stops them all); a preset without lfos leaves them as they are",
    )

    # cold: must match the running pipeline, else the recall is refused
    model: str | None = Field(
        default=None,
        strict=True,
        min_length=1,
        max_length=MAX_MODEL_ID_CHARS,
        description="model id or path the preset was made for (cold)",
    )
    vae: str | None = Field(
        default=None,
        strict=True,
        min_length=1,
        max_length=MAX_MODEL_ID_CHARS,
        description="VAE id or path, e.g. a TAESD (cold)",
    )
    size: str | None = Field(
        default=None,
        strict=True,
        description=f"output size WIDTHxHEIGHT, {SIZE_MIN}..{SIZE_MAX}, multiples of {SIZE_MULTIPLE} (cold)",
    )
    steps: int | None = Field(
        default=None, strict=True, ge=1, le=10, description="number of denoising steps n, 1..10 (cold)"
    )
    frame_buffer: int | None = Field(
        default=None, strict=True, ge=1, le=8, description="frames batched per call, 1..8 (cold)"
    )
    cfg: CfgType | None = Field(
        default=None, description="classifier-free guidance mode: none|full|self|initialize (cold)"
    )
    acceleration: AccelerationType | None = Field(
        default=None, description="auto|none|compile|tensorrt|onnxruntime (cold)"
    )

    # per ControlNet, in config order: hot scale/enabled/canny, cold model/preprocessor/source
    controlnets: list[ControlNetPreset] | None = Field(
        default=None, max_length=MAX_CONTROLNETS,
        description="one entry per configured ControlNet, in order (an entry may be {} to leave one alone)")

    @model_validator(mode="before")
    @classmethod
    def _null_entries(cls, data: Any) -> Any:
        # `- ` with nothing after it in YAML is None: the same as {} (leave that ControlNet alone)
        if isinstance(data, dict) and isinstance(data.get("controlnets"), list):
            data = {**data, "controlnets": [{} if e is None else e for e in data["controlnets"]]}
        return data

    @field_validator("size", mode="before")
    @classmethod
    def _size_is_text(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError(f"size must be WIDTHxHEIGHT, e.g. 512x512 (got {value!r})")
        return value

    @field_validator(*HOT_FIELDS, mode="after")
    @classmethod
    def _check_hot(cls, value: Any, info: ValidationInfo) -> Any:
        # the same check OSC applies, so a preset can never hold what OSC would refuse
        if value is None:
            return None
        return PARAMS[info.field_name].check(value)

    @field_validator("description", mode="after")
    @classmethod
    def _check_description(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_text(value, "description", MAX_DESCRIPTION_CHARS)

    @field_validator("model", "vae", mode="after")
    @classmethod
    def _check_model_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_text(value, "model id", MAX_MODEL_ID_CHARS)

    @field_validator("size", mode="after")
    @classmethod
    def _check_size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    # ---- helpers for the daemon ----

    def hot_values(self) -> dict[str, Any]:
        """The hot parameters this preset sets, in table order."""
        return {k: getattr(self, k) for k in HOT_FIELDS if getattr(self, k) is not None}

    def controlnet_values(self) -> dict[str, Any]:
        """The ControlNets' hot values this preset sets, as live parameter names
        (``controlnet_<i>_scale``, ``_enabled``, ``_canny_low``, ``_canny_high``)."""
        out: dict[str, Any] = {}
        for i, entry in enumerate(self.controlnets or ()):
            if entry.scale is not None:
                out[f"controlnet_{i}_scale"] = float(entry.scale)
            if entry.enabled is not None:
                out[f"controlnet_{i}_enabled"] = entry.enabled
            if entry.canny is not None:
                if entry.canny.low is not None:
                    out[f"controlnet_{i}_canny_low"] = float(entry.canny.low)
                if entry.canny.high is not None:
                    out[f"controlnet_{i}_canny_high"] = float(entry.canny.high)
        return out

    def cold_values(self) -> dict[str, Any]:
        """The cold settings this preset names."""
        return {k: getattr(self, k) for k in COLD_FIELDS if getattr(self, k) is not None}

    def prompt_texts(self) -> list[str]:
        """Non-empty prompt texts this preset sets (what to pre-encode), without duplicates."""
        out: list[str] = []
        for k in PROMPT_FIELDS:
            v = getattr(self, k)
            if v and v not in out:
                out.append(v)
        return out

    def size_wh(self) -> tuple[int, int] | None:
        return parse_size(self.size) if self.size is not None else None

    def cold_conflicts(self, running: ColdSettings) -> list[str]:
        """One message per cold field that differs from the running pipeline; empty if compatible."""
        out: list[str] = []
        for field in COLD_FIELDS:
            want = getattr(self, field)
            if want is None:
                continue
            have = getattr(running, field)
            if field == "size":
                want_wh = parse_size(want)
                if tuple(have) != want_wh:
                    out.append(f"size: preset wants {want}, the pipeline runs {have[0]}x{have[1]}")
            elif want != have:
                have_s = "the default" if have is None else str(have)
                out.append(f"{field}: preset wants {want}, the pipeline runs {have_s}")
        out += self._controlnet_conflicts(running.controlnets)
        return out

    def _controlnet_conflicts(self, running: tuple[ControlNetCold, ...]) -> list[str]:
        out: list[str] = []
        entries = self.controlnets or []
        if len(entries) > len(running):
            out.append(f"controlnets: preset sets {len(entries)} ControlNet(s), the pipeline runs {len(running)}")
        for i, (entry, have) in enumerate(zip(entries, running, strict=False)):
            if entry.model is not None and entry.model != have.model:
                out.append(f"controlnets.{i}.model: preset wants {entry.model}, the pipeline runs {have.model}")
            if entry.preprocessor is not None and entry.preprocessor != have.preprocessor:
                out.append(f"controlnets.{i}.preprocessor: preset wants {entry.preprocessor}, "
                           f"the pipeline runs {have.preprocessor}")
            if entry.source is not None and source_key(entry.source) != have.source:
                running_s = "input" if have.source == "input" else f"{have.source.get('type')} source"
                out.append(f"controlnets.{i}.source: preset wants {entry.source}, the pipeline runs {running_s}")
            if entry.canny is not None and have.preprocessor != "canny":
                out.append(f"controlnets.{i}.canny: ControlNet {i} runs preprocessor {have.preprocessor}, "
                           "which has no canny thresholds")
        return out


# ---------------------------------------------------------------- loading one file


def _scalar_trap(node: yaml.ScalarNode) -> str | None:
    """Why a plain YAML 1.1 scalar probably does not mean what it looks like, or None."""
    if node.style is not None:  # quoted or block scalars are taken as written
        return None
    text = node.value
    tag = node.tag.rsplit(":", 1)[-1]
    if tag == "bool" and text.lower() not in ("true", "false"):
        value = yaml.safe_load(text)
        return f"{text!r} is read by YAML 1.1 as the boolean {value}; quote it ('{text}') if you meant text"
    if tag in ("int", "float") and ":" in text:
        value = yaml.safe_load(text)
        return (
            f"{text!r} is read by YAML 1.1 as the base-60 number {value}; "
            f"write a plain number or quote it ('{text}')"
        )
    if tag == "int" and re.fullmatch(r"[-+]?0[0-7_]+", text):
        value = yaml.safe_load(text)
        return f"{text!r} is read by YAML 1.1 as the octal number {value}; drop the leading zero"
    if tag == "null":
        return "has no value (write a value, or delete the line to leave it unchanged)"
    if tag == "timestamp":
        return f"{text!r} is read by YAML as a date; quote it ('{text}') if you meant text"
    return None


def _find_traps(text: str, source: str, lines: dict[PathKey, int]) -> tuple[list[str], set[Any]]:
    """Scan the top-level mapping for YAML 1.1 traps. Returns (messages, data keys to drop)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)  # aliases were already refused by yamlio
    if not isinstance(node, yaml.MappingNode):
        return [], set()
    problems: list[str] = []
    drop: set[Any] = set()
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            continue  # a non-scalar key: pydantic reports it
        if key_node.tag != "tag:yaml.org,2002:str":
            constructed = yaml.safe_load(key_node.value) if key_node.style is None else key_node.value
            problems.append(
                f"{source}:{line}: key {key_node.value!r}: is read by YAML 1.1 as {constructed!r}, "
                f"not as text; no such key exists (check the spelling, or quote it)"
            )
            drop.add(constructed)
            continue
        if isinstance(value_node, yaml.ScalarNode) and key_node.value in Preset.model_fields:
            why = _scalar_trap(value_node)
            if why is not None:
                vline = lines.get((key_node.value,), line)
                problems.append(f"{source}:{vline}: key '{key_node.value}': {why}")
                drop.add(key_node.value)
    return problems, drop


def parse_preset_text(text: str, source: str = "<string>") -> Preset:
    """Parse and validate preset YAML text; :class:`ConfigError` lists every located problem."""
    data, lines = load_yaml_text(text, source)
    if data is None or data == {}:
        # also what a reader sees mid-write from an editor that truncates first
        raise ConfigError(f"{source}:1: preset file is empty (no keys); nothing to recall")
    traps, drop = _find_traps(text, source, lines)
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in drop and isinstance(k, str)}
    try:
        preset = validate(Preset, data, source, lines)
    except ConfigError as exc:
        problems = traps + list(exc.problems)
        raise ConfigError("\n".join(problems), problems) from None
    if traps:
        raise ConfigError("\n".join(traps), traps)
    return preset


def _read_text(path: Path) -> str:
    """Read a preset file with the yamlio size cap applied before and after reading."""
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(
                f"{path}: file is {size} bytes, over the {MAX_YAML_BYTES // 1024} KiB cap; refusing to parse it"
            )
        with path.open("rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: file is over the {MAX_YAML_BYTES // 1024} KiB cap; refusing to parse it")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def load_preset_file(path: str | os.PathLike[str]) -> Preset:
    """Read, parse and validate one preset file (raises :class:`ConfigError`)."""
    p = Path(path)
    return parse_preset_text(_read_text(p), str(p))


class _PresetDumper(yaml.SafeDumper):
    """SafeDumper that double-quotes (and so escapes) any text with non-printable characters.

    Plain and single-quoted YAML scalars cannot carry characters such as NEL (U+0085) or a tab
    safely: YAML treats some of them as line breaks and folds them on reading.
    """


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = None if data.isprintable() else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_PresetDumper.add_representer(str, _represent_str)


def dump_preset(preset: Preset) -> str:
    """YAML text for ``preset``: description, the hot fields that are set (table order), then cold."""
    data: dict[str, Any] = {}
    if preset.description is not None:
        data["description"] = preset.description
    data.update(preset.hot_values())
    if preset.lfos is not None:
        data["lfos"] = {k: v.model_dump(exclude_none=True) for k, v in preset.lfos.items()}
    data.update(preset.cold_values())
    if preset.controlnets is not None:
        data["controlnets"] = [e.model_dump(exclude_none=True) for e in preset.controlnets]
    body = yaml.dump(
        data, Dumper=_PresetDumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    )
    return "# StreamBridge preset (format: docs/presets.md)\n" + body


def check_name(name: Any) -> str:
    """Return ``name`` if it is an allowed preset name, else raise ValueError. Never sanitises."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise ValueError(f"invalid preset name {name!r}: use {NAME_RULE}")
    if os.name == "nt" and name.upper() in _WINDOWS_RESERVED:
        raise ValueError(f"invalid preset name {name!r}: reserved by Windows")
    return name


def preset_sort_key(name: str) -> tuple[str, str]:
    """Index order: case-insensitive, ties broken by the exact name."""
    return (name.lower(), name)


# ---------------------------------------------------------------- the folder


class PresetExistsError(ValueError):
    """A save would replace an existing preset and was not asked to."""


class PresetLimitError(ValueError):
    """A save would add a preset past the configured maximum."""


class PresetChanges(NamedTuple):
    """What one reload changed. ``errors`` holds the files that failed in *this* reload."""

    changed: dict[str, Preset]
    removed: list[str]
    errors: dict[str, str]

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed or self.errors)


OnChange = Callable[[dict[str, Preset], list[str], dict[str, str]], None]

_Sig = tuple[int, int, int, int]  # mtime_ns, size, inode, ctime_ns


class PresetStore:
    """All presets in one folder; the last good version of each stays active.

    Reads (:meth:`get`, :meth:`names`, ...) are thread-safe and never touch the disk. The folder
    is read at construction and then by :meth:`reload` or the watcher thread
    (:meth:`start_watching`); :meth:`save` writes a file and leaves picking it up to those.
    """

    def __init__(self, folder: str | os.PathLike[str], *, poll_s: float = 0.2, debounce_s: float = 0.3) -> None:
        self._folder = Path(folder)
        if not self._folder.is_dir():
            raise ConfigError(f"{self._folder}: presets folder does not exist or is not a folder")
        self._poll_s = poll_s
        self._debounce_s = debounce_s
        self._lock = threading.Lock()  # guards the published state below
        self._apply_lock = threading.Lock()  # one reload at a time (watcher or reload())
        self._presets: dict[str, Preset] = {}
        self._paths: dict[str, Path] = {}
        self._errors: dict[str, str] = {}
        self._sorted: list[str] = []
        self._applied: dict[str, _Sig] = {}  # file name -> signature when last processed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_change: OnChange | None = None
        snap = self._snapshot()
        if snap is None:
            raise ConfigError(f"{self._folder}: cannot list the presets folder")
        self._apply(snap, initial=True)
        log.info(
            "presets: %d loaded from %s (%d file(s) with problems)",
            len(self._presets), self._folder, len(self._errors),
        )

    # ---- reads ----

    @property
    def folder(self) -> Path:
        return self._folder

    def get(self, name: str) -> Preset | None:
        with self._lock:
            return self._presets.get(name)

    def path_of(self, name: str) -> Path | None:
        with self._lock:
            return self._paths.get(name)

    def names(self) -> list[str]:
        """Preset names in index order (case-insensitive sort)."""
        with self._lock:
            return list(self._sorted)

    def items(self) -> list[tuple[str, Preset]]:
        with self._lock:
            return [(n, self._presets[n]) for n in self._sorted]

    def __len__(self) -> int:
        with self._lock:
            return len(self._sorted)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._presets

    def name_at(self, index: int) -> str | None:
        """Name at 0-based ``index`` in :meth:`names` order, or None when out of range."""
        with self._lock:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self._sorted):
                return None
            return self._sorted[index]

    def by_index(self, index: int) -> tuple[str, Preset] | None:
        """``(name, preset)`` at 0-based ``index``, or None when out of range."""
        with self._lock:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self._sorted):
                return None
            name = self._sorted[index]
            return name, self._presets[name]

    def step(self, current: str | None, direction: int = 1) -> str | None:
        """The name ``direction`` (+1/-1) places after ``current``, wrapping; None if empty.

        ``current`` may be None or a name that no longer exists: +1 then gives the first name
        after where it would sort, -1 the one before.
        """
        with self._lock:
            names = self._sorted
            if not names:
                return None
            step = 1 if direction >= 0 else -1
            if current is not None and current in self._presets:
                return names[(names.index(current) + step) % len(names)]
            if current is None:
                return names[0] if step > 0 else names[-1]
            keys = [preset_sort_key(n) for n in names]
            pos = bisect.bisect_left(keys, preset_sort_key(current))
            return names[pos % len(names)] if step > 0 else names[(pos - 1) % len(names)]

    def errors(self) -> dict[str, str]:
        """Current per-file problems, keyed by preset name (the file stem)."""
        with self._lock:
            return dict(self._errors)

    # ---- reading the folder ----

    def _snapshot(self) -> dict[str, _Sig] | None:
        """{file name: signature} of candidate preset files; None if the folder cannot be listed."""
        out: dict[str, _Sig] = {}
        try:
            with os.scandir(self._folder) as it:
                for entry in it:
                    if entry.name.startswith(".") or not entry.name.lower().endswith(PRESET_SUFFIXES):
                        continue
                    try:
                        st = entry.stat()  # follows symlinks
                    except OSError:
                        continue  # vanished between listing and stat
                    if not entry.is_file():
                        continue
                    out[entry.name] = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
        except OSError as exc:
            log.warning("presets: cannot list %s (%s); keeping the presets in memory", self._folder, exc)
            return None
        return out

    def reload(self) -> PresetChanges:
        """Re-read changed files now. Returns what changed (the watcher's callback is not called)."""
        snap = self._snapshot()
        if snap is None:
            return PresetChanges({}, [], {})
        return self._apply(snap)

    def _apply(self, snap: dict[str, _Sig], initial: bool = False) -> PresetChanges:
        with self._apply_lock:
            by_stem: dict[str, list[str]] = {}
            for fname in snap:
                by_stem.setdefault(Path(fname).stem, []).append(fname)
            applied_by_stem: dict[str, set[str]] = {}
            for fname in self._applied:
                applied_by_stem.setdefault(Path(fname).stem, set()).add(fname)
            with self._lock:
                old_presets = dict(self._presets)
                old_paths = dict(self._paths)
                errors = dict(self._errors)
            presets = dict(old_presets)
            paths = dict(old_paths)
            changed: dict[str, Preset] = {}
            new_errors: dict[str, str] = {}

            for stem, fnames in by_stem.items():
                # .yaml before .yml; then by exact name so the choice is stable
                fnames.sort(key=lambda f: (not f.lower().endswith(".yaml"), f))
                chosen = fnames[0]
                dirty = set(fnames) != applied_by_stem.get(stem, set()) or any(
                    self._applied.get(f) != snap[f] for f in fnames
                )
                if not dirty:
                    continue
                path = self._folder / chosen
                problem: str | None = None
                problem_lines: list[str] = []
                if NAME_RE.fullmatch(stem) is None:
                    problem = f"{path}: file name is not a valid preset name ({NAME_RULE}); not loaded"
                else:
                    try:
                        preset = load_preset_file(path)
                    except ConfigError as exc:
                        problem = str(exc)
                        problem_lines = list(exc.problems)
                        if stem in old_presets:
                            log.warning("preset '%s' not reloaded, the previous version stays active", stem)
                    else:
                        if old_presets.get(stem) != preset:
                            changed[stem] = preset
                        presets[stem] = preset
                        paths[stem] = path
                        if len(fnames) > 1:
                            others = ", ".join(fnames[1:])
                            problem = f"{self._folder / fnames[1]}: duplicate of preset '{stem}' ({chosen} is used, {others} ignored)"
                if problem is None:
                    errors.pop(stem, None)
                else:
                    errors[stem] = problem
                    new_errors[stem] = problem
                    for line in problem_lines or [problem]:
                        log.error("%s", line)

            removed = sorted(n for n in presets if n not in by_stem)
            for n in removed:
                del presets[n]
                paths.pop(n, None)
            for stem in [s for s in errors if s not in by_stem]:
                del errors[stem]

            with self._lock:
                self._presets = presets
                self._paths = paths
                self._errors = errors
                self._sorted = sorted(presets, key=preset_sort_key)
            self._applied = snap
            changes = PresetChanges(changed, removed, new_errors)
            if changes and not initial:
                log.info(
                    "presets reloaded: %d changed, %d removed, %d errors (%d active)",
                    len(changed), len(removed), len(new_errors), len(presets),
                )
            return changes

    # ---- hot reload ----

    def start_watching(self, on_change: OnChange) -> None:
        """Poll the folder on a daemon thread and call ``on_change(changed, removed, errors)``.

        ``changed`` maps names to the newly active presets, ``removed`` lists deleted names and
        ``errors`` the files that failed in this reload (their previous good version, if any,
        stays active; :meth:`errors` has the full current set). The callback runs on the watcher
        thread: hand work off, don't block. Exceptions in it are logged.
        """
        if self._thread is not None:
            raise RuntimeError("the preset watcher is already running")
        self._on_change = on_change
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="preset-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the watcher (returns within about one poll interval)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("preset watcher did not stop within %.1f s", timeout)

    def _watch(self) -> None:
        last_seen: dict[str, _Sig] | None = dict(self._applied)
        pending_since: float | None = None
        while not self._stop.wait(self._poll_s):
            try:
                snap = self._snapshot()
                if snap is None:
                    continue
                now = time.monotonic()
                if snap != last_seen:
                    last_seen = snap
                    pending_since = now
                    continue
                if pending_since is None or now - pending_since < self._debounce_s:
                    continue
                pending_since = None
                changes = self._apply(snap)
                if changes and self._on_change is not None:
                    try:
                        self._on_change(changes.changed, changes.removed, changes.errors)
                    except Exception:
                        log.exception("preset change callback failed")
            except Exception:
                log.exception("preset watcher: unexpected error; still watching")

    # ---- saving ----

    def target_path(self, name: str) -> Path:
        """The file ``save(name, ...)`` would write, after every safety check (ValueError if unsafe)."""
        check_name(name)
        folder = self._folder.resolve(strict=True)
        existing_yml = folder / f"{name}.yml"
        target = folder / f"{name}.yaml"
        if not target.exists() and not target.is_symlink() and existing_yml.is_file():
            target = existing_yml
        if target.is_symlink():
            raise ValueError(f"refusing to save preset {name!r}: {target} is a symbolic link")
        resolved = target.resolve()
        if resolved.parent != folder or not resolved.is_relative_to(folder):
            raise ValueError(f"refusing to save preset {name!r}: {resolved} is outside {folder}")
        return target

    def count_files(self) -> int:
        """How many preset files the folder holds now (reads the folder)."""
        snap = self._snapshot()
        return len({Path(f).stem for f in snap}) if snap is not None else len(self)

    def save(self, name: str, preset: Preset, *, overwrite: bool = True, max_count: int | None = None) -> Path:
        """Write ``preset`` as ``<folder>/<name>.yaml`` atomically and return the path.

        The name is checked against the allow-list and the path must resolve inside the folder
        before anything touches the disk. With ``overwrite=False`` an existing preset is left
        alone (:class:`PresetExistsError`); a new preset is refused once the folder holds
        ``max_count`` presets (:class:`PresetLimitError`). The text is checked to load back to an
        equal preset before it is written. The store picks the file up on the next reload/watch
        cycle.
        """
        target = self.target_path(name)
        exists = target.exists()
        if exists and not overwrite:
            raise PresetExistsError(f"preset '{name}' already exists ({target.name}); not overwritten")
        if not exists and max_count is not None and self.count_files() >= max_count:
            raise PresetLimitError(
                f"preset '{name}' not saved: the folder holds {max_count} presets, the limit "
                "(presets.max_count); delete some or raise the limit"
            )
        text = dump_preset(preset)
        back = parse_preset_text(text, str(target))
        if back != preset:
            raise ConfigError(f"{target}: preset does not survive a save/load round trip; not written")
        atomic_write_text(target, text)
        log.info("preset '%s' saved to %s", name, target)
        return target


# ---------------------------------------------------------------- saving off the render thread

DEFAULT_MAX_PRESETS = 500
SAVE_MAX_PENDING = 16  # distinct preset names waiting to be written
SAVE_MIN_INTERVAL_S = 0.2  # at most 5 files a second while the show runs (none skipped on close)


class PresetSaver:
    """Writes preset saves on its own thread, so the render loop never touches the disk.

    :meth:`submit` (any thread, never blocks) queues ``(name, preset, overwrite)``. Saves of the
    same name coalesce (the latest state and overwrite flag win; the earlier one is counted as
    ``superseded``); at most ``max_pending`` distinct names wait, more are refused. The thread
    writes at most one file per ``min_interval`` seconds, so 500 saves a second write a handful
    of files. Every outcome is reported: a refusal or a failed write calls ``on_error(address,
    reason)`` and is logged. :meth:`close` writes everything still pending (no interval) before
    it returns: nothing accepted is lost on stop.
    """

    ADDRESS = "/sd/preset/save"

    def __init__(
        self,
        store: PresetStore,
        *,
        max_count: int = DEFAULT_MAX_PRESETS,
        max_pending: int = SAVE_MAX_PENDING,
        min_interval: float = SAVE_MIN_INTERVAL_S,
        on_error: Callable[[str, str], None] = lambda address, reason: None,
        on_saved: Callable[[str, Path], None] = lambda name, path: None,
    ) -> None:
        self.store = store
        self.max_count = max_count
        self.max_pending = max_pending
        self.min_interval = min_interval
        self._on_error = on_error
        self._on_saved = on_saved
        self._cond = threading.Condition()
        self._pending: dict[str, tuple[Preset, bool]] = {}
        self._closing = False
        self._counts = dict.fromkeys(("accepted", "superseded", "written", "refused", "failed"), 0)
        self._thread = threading.Thread(target=self._run, name="preset-save", daemon=True)
        self._thread.start()

    def submit(self, name: str, preset: Preset, overwrite: bool = False) -> str | None:
        """Queue a save. Returns None if accepted, else the reason it was refused (also reported
        through ``on_error``). Only the name's characters are checked here (no disk access)."""
        try:
            check_name(name)
        except ValueError as exc:
            return self._refuse(str(exc))
        with self._cond:
            if self._closing:
                reason = f"preset '{name}' not saved: stopping"
            elif name not in self._pending and len(self._pending) >= self.max_pending:
                reason = f"preset '{name}' not saved: {self.max_pending} saves are already waiting"
            else:
                if name in self._pending:
                    self._counts["superseded"] += 1
                    del self._pending[name]
                self._pending[name] = (preset, overwrite)
                self._counts["accepted"] += 1
                self._cond.notify()
                return None
        return self._refuse(reason)

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def stats(self) -> dict[str, int]:
        """``accepted``, ``superseded`` (replaced by a later save of the same name before it was
        written), ``written``, ``refused`` (never queued), ``failed`` (queued, not written)."""
        with self._cond:
            return dict(self._counts)

    def close(self, timeout: float = 10.0) -> None:
        """Write every pending save now, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                left = list(self._pending)
            log.error("preset saves still pending after %.1f s at stop: %s", timeout, ", ".join(left) or "-")

    # ---- the saver thread ----

    def _refuse(self, reason: str) -> str:
        with self._cond:
            self._counts["refused"] += 1
        log.warning("%s", reason)
        self._on_error(self.ADDRESS, reason)
        return reason

    def _run(self) -> None:
        next_write = 0.0
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:  # closing and nothing left
                    return
                if not self._closing:
                    delay = next_write - time.monotonic()
                    if delay > 0:
                        self._cond.wait(delay)  # more saves of the same name coalesce meanwhile
                        continue
                name = next(iter(self._pending))
                preset, overwrite = self._pending.pop(name)
            self._write(name, preset, overwrite)
            next_write = time.monotonic() + self.min_interval

    def _write(self, name: str, preset: Preset, overwrite: bool) -> None:
        try:
            path = self.store.save(name, preset, overwrite=overwrite, max_count=self.max_count)
        except PresetExistsError as exc:
            reason = f"{exc}: send /sd/preset/save {name} 1 to overwrite it"
        except Exception as exc:
            reason = f"saving preset '{name}' failed: {str(exc).splitlines()[0]}"
        else:
            with self._cond:
                self._counts["written"] += 1
            self._on_saved(name, path)
            return
        with self._cond:
            self._counts["failed"] += 1
        log.warning("%s", reason)
        self._on_error(self.ADDRESS, reason)
