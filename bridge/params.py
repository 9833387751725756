"""The live ("hot") parameters: one table shared by OSC, presets, feedback and the render loop.

Every parameter has a type, a hard range (values outside are rejected, never clamped), a default
and, for numbers, a *control range* that ``/sd/norm/<param>`` maps 0..1 onto. The control range
defaults to the hard range and can be narrowed in the config (``osc.ranges``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_PROMPT_CHARS = 2000


@dataclass(frozen=True)
class ParamSpec:
    name: str  # python / preset key, e.g. "prompt_mix"
    address: str  # OSC address, e.g. "/sd/prompt/mix"
    kind: type  # str, float, int or bool
    default: Any
    lo: float | None = None  # hard range (inclusive) for numbers
    hi: float | None = None
    doc: str = ""
    control: tuple[float, float] | None = None  # default /sd/norm range when narrower than lo..hi

    @property
    def control_range(self) -> tuple[float, float]:
        """What /sd/norm/<param> 0..1 spans unless the config says otherwise."""
        if self.control is not None:
            return self.control
        if self.lo is None or self.hi is None:
            raise ValueError(f"{self.name} is not a number: it has no control range")
        return (float(self.lo), float(self.hi))

    def check(self, value: Any) -> Any:
        """Return ``value`` coerced to this parameter's type, or raise ValueError with a reason."""
        if self.kind is str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {type(value).__name__}")
            if len(value) > MAX_PROMPT_CHARS:
                raise ValueError(f"string longer than {MAX_PROMPT_CHARS} characters")
            if "\x00" in value:
                raise ValueError("string contains a NUL character")
            return value
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if isinstance(value, float) and value in (0.0, 1.0):
                return bool(value)
            raise ValueError(f"expected 0/1 or True/False, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {type(value).__name__}")
        if self.kind is int:
            if isinstance(value, float):
                if not math.isfinite(value) or value != int(value):
                    raise ValueError(f"expected an integer, got {value!r}")
                value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {value!r}")
        if self.lo is not None and value < self.lo or self.hi is not None and value > self.hi:
            raise ValueError(f"{value!r} is outside {self.lo:g}..{self.hi:g}")
        return value


PARAMS: dict[str, ParamSpec] = {
    p.name: p
    for p in [
        ParamSpec("prompt", "/sd/prompt", str, "a neon city at night, cinematic", doc="positive prompt"),
        ParamSpec("negative_prompt", "/sd/negative_prompt", str, "", doc="negative prompt"),
        ParamSpec("prompt_a", "/sd/prompt/a", str, "", doc="crossfader prompt A (empty: use prompt)"),
        ParamSpec("prompt_b", "/sd/prompt/b", str, "", doc="crossfader prompt B"),
        ParamSpec("prompt_mix", "/sd/prompt/mix", float, 0.0, 0.0, 1.0, doc="slerp A (0) -> B (1)"),
        ParamSpec("strength", "/sd/strength", float, 0.5, 0.0, 1.0, doc="img2img strength"),
        # control ranges: a fader over the useful span, not the whole legal one
        ParamSpec("guidance", "/sd/guidance", float, 1.2, 0.0, 20.0, doc="guidance scale", control=(0.0, 5.0)),
        ParamSpec("delta", "/sd/delta", float, 1.0, 0.0, 5.0, doc="residual CFG scale", control=(0.0, 2.0)),
        ParamSpec("seed", "/sd/seed", int, 2, 0, 2**31 - 1, doc="noise seed", control=(0, 9999)),
        ParamSpec("seed_b", "/sd/seed/b", int, 3, 0, 2**31 - 1, doc="seed crossfader: seed B", control=(0, 9999)),
        ParamSpec("seed_mix", "/sd/seed/mix", float, 0.0, 0.0, 1.0, doc="slerp between the noise of seed (0) and seed B (1)"),
        ParamSpec(
            "transition", "/sd/transition", float, 0.0, 0.0, 120.0, doc="default morph seconds",
            control=(0.0, 10.0),
        ),
        ParamSpec(
            "transition_beats", "/sd/transition/beats", float, 0.0, 0.0, 256.0,
            doc="default morph length in beats at the current tempo (0: use transition seconds)",
            control=(0.0, 16.0),
        ),
        ParamSpec("bypass", "/sd/bypass", bool, False, doc="pass the input through"),
        ParamSpec("mix", "/sd/mix", float, 1.0, 0.0, 1.0, doc="dry (0) / wet (1)"),
        ParamSpec(
            "filter_threshold", "/sd/filter/threshold", float, 1.0, 0.0, 1.0,
            doc="similarity filter threshold (1 disables)",
        ),
        ParamSpec(
            "smoothing", "/sd/smoothing", float, 0.0, 0.0, 0.95,
            doc="temporal smoothing of output latents (0 off; more: less flicker, more ghosting)",
            control=(0.0, 0.9),
        ),
        ParamSpec(
            "bpm", "/sd/tempo/bpm", float, 120.0, 20.0, 999.0,
            doc="tempo in beats per minute (with Ableton Link: the session's)", control=(60.0, 180.0),
        ),
        # temporal consistency (stream_core.temporal); the bank's size is temporal.max_frames (cold)
        ParamSpec(
            "temporal_cache", "/sd/temporal/cache", bool, False,
            doc="cached attention: attend to the last frames' keys/values (needs temporal.max_frames > 0)",
        ),
        ParamSpec(
            "temporal_frames", "/sd/temporal/frames", int, 1, 1, 4,
            doc="cached frames read, newest first (1..temporal.max_frames)",
        ),
        ParamSpec(
            "temporal_interval", "/sd/temporal/interval", int, 1, 1, 64,
            doc="refresh the cache every N processed frames", control=(1, 8),
        ),
        ParamSpec(
            "temporal_injection", "/sd/temporal/injection", float, 0.0, 0.0, 1.0,
            doc="feature injection: pull attention outputs toward their nearest cached feature (0 off)",
        ),
        ParamSpec(
            "latent_feedback", "/sd/feedback", float, 0.0, 0.0, 0.9,
            doc="share of the previous output latent mixed into the next input latent (0 off)",
        ),
    ]
}

BY_ADDRESS: dict[str, ParamSpec] = {p.address: p for p in PARAMS.values()}

# numbers that /sd/norm/<param> can drive: "/sd/norm" + the parameter's address after "/sd"
NORM_PREFIX = "/sd/norm"
NORMALIZABLE: dict[str, ParamSpec] = {
    NORM_PREFIX + p.address[len("/sd") :]: p for p in PARAMS.values() if p.kind in (int, float)
}


def default_values() -> dict[str, Any]:
    return {name: spec.default for name, spec in PARAMS.items()}


def denormalize(spec: ParamSpec, x: float, control_range: tuple[float, float] | None = None) -> Any:
    """Map ``x`` in 0..1 onto the control range (default: the parameter's own)."""
    lo, hi = control_range if control_range is not None else spec.control_range
    v = lo + (hi - lo) * x
    if spec.kind is int:
        return int(round(v))
    return float(v)


def normalize(spec: ParamSpec, value: float, control_range: tuple[float, float] | None = None) -> float:
    lo, hi = control_range if control_range is not None else spec.control_range
    if hi == lo:
        return 0.0
    return min(1.0, max(0.0, (float(value) - lo) / (hi - lo)))


# ---------------------------------------------------------------- per-ControlNet parameters
# They depend on the config (how many ControlNets, which preprocessor), so they are not in the
# static table above: :func:`controlnet_params` makes them for one configuration and
# :func:`live_params` returns the static table plus those. Names are ``controlnet_<i>_<knob>``.

MAX_CONTROLNETS = 4
CONTROLNET_KNOBS = ("scale", "enabled", "canny_low", "canny_high")
CANNY_MAX = 1000.0  # OpenCV's thresholds apply to the gradient magnitude (L1, 8-bit input)


def controlnet_param_name(index: int, knob: str) -> str:
    """``controlnet_<index>_<knob>``, the parameter (and flat preset) name of one knob."""
    return f"controlnet_{index}_{knob}"


def controlnet_params(preprocessors: Sequence[str]) -> dict[str, ParamSpec]:
    """The live parameters of the configured ControlNets (one preprocessor name each, in config
    order): scale and enabled for every one, the canny thresholds for ``canny`` ones."""
    out: dict[str, ParamSpec] = {}
    for i, pre in enumerate(preprocessors):
        base = f"/sd/controlnet/{i}"
        specs = [
            ParamSpec(controlnet_param_name(i, "scale"), f"{base}/scale", float, 1.0, 0.0, 2.0,
                      doc=f"ControlNet {i}: conditioning scale (0: off, no ControlNet call)"),
            ParamSpec(controlnet_param_name(i, "enabled"), f"{base}/enabled", bool, True,
                      doc=f"ControlNet {i}: on (1) / off (0)"),
        ]
        if pre == "canny":
            specs += [
                ParamSpec(controlnet_param_name(i, "canny_low"), f"{base}/canny/low", float, 100.0, 0.0, CANNY_MAX,
                          doc=f"ControlNet {i}: canny low threshold", control=(0.0, 500.0)),
                ParamSpec(controlnet_param_name(i, "canny_high"), f"{base}/canny/high", float, 200.0, 0.0, CANNY_MAX,
                          doc=f"ControlNet {i}: canny high threshold", control=(0.0, 500.0)),
            ]
        out.update({p.name: p for p in specs})
    return out


def live_params(preprocessors: Sequence[str] = ()) -> dict[str, ParamSpec]:
    """The static table plus the ControlNet parameters of one configuration."""
    if not preprocessors:
        return PARAMS
    return {**PARAMS, **controlnet_params(preprocessors)}


def normalizable(params: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
    """``/sd/norm/...`` address -> spec for the numbers of a parameter table."""
    return {NORM_PREFIX + p.address[len("/sd") :]: p for p in params.values() if p.kind in (int, float)}
