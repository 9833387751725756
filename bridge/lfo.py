"""Low-frequency oscillators (LFOs) on numeric live parameters. Pure: no clock, no threads.

An LFO adds ``amplitude * wave(x)`` to a parameter's fader value every control tick, where ``x``
is the position in cycles: ``beats / rate + phase`` when it follows the tempo (``sync``; ``rate``
is then the cycle length in beats: 1 = one cycle per beat, 4 = one per 4/4 bar) or ``seconds *
rate + phase`` when it runs free (``rate`` in Hz; a rate change there continues the wave from
where it is instead of jumping, while a synced LFO stays locked to the beat grid). Every wave
spans -1..1:

* ``sine``: ``sin(2 pi x)``
* ``triangle``: 0 at x = 0, +1 at 1/4, -1 at 3/4 (in step with the sine)
* ``saw``: a ramp from -1 (x = 0) up to +1 (x -> 1)
* ``square``: +1 for the first half of the cycle, -1 for the second
* ``random``: smooth random: a new random target each cycle, eased into with a cosine, so it
  never jumps (deterministic for a given seed: the same parameter wobbles the same way each run)

The amplitude (``depth``) is in the parameter's own units, or with ``norm`` a fraction of its
control range (the span ``/sd/norm/<param>`` covers). The result is clamped to the parameter's
hard range by the caller; the fader value itself is never changed.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace
from typing import Any

SHAPES: tuple[str, ...] = ("sine", "triangle", "saw", "square", "random")
#: Parameters an LFO may drive: the continuous numbers the pipeline reads every frame.
LFO_TARGETS: tuple[str, ...] = (
    "prompt_mix", "strength", "guidance", "delta", "seed_mix", "mix", "filter_threshold", "smoothing",
)
#: Fields of an LFO, as YAML keys in presets and as ``/sd/lfo/<param>/<field>`` OSC addresses.
FIELDS: tuple[str, ...] = ("shape", "rate", "sync", "depth", "depth_norm", "phase", "enabled")
MIN_RATE, MAX_RATE = 0.001, 1000.0
MAX_DEPTH = 1000.0

_M64 = (1 << 64) - 1


def _random_point(seed: int, k: int) -> float:
    """A repeatable value in -1..1 for cycle ``k`` (splitmix64 of seed and k)."""
    z = (seed * 0x9E3779B97F4A7C15 + k * 0xD1B54A32D192ED03 + 0x94D049BB133111EB) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return z / float(1 << 63) - 1.0


def wave(shape: str, x: float, seed: int = 0) -> float:
    """The wave ``shape`` at ``x`` cycles, in -1..1."""
    f = x - math.floor(x)
    if shape == "sine":
        return math.sin(2.0 * math.pi * f)
    if shape == "triangle":
        if f < 0.25:
            return 4.0 * f
        if f < 0.75:
            return 2.0 - 4.0 * f
        return 4.0 * f - 4.0
    if shape == "saw":
        return 2.0 * f - 1.0
    if shape == "square":
        return 1.0 if f < 0.5 else -1.0
    if shape == "random":
        k = math.floor(x)
        a, b = _random_point(seed, k), _random_point(seed, k + 1)
        return a + (b - a) * (1.0 - math.cos(math.pi * f)) * 0.5
    raise ValueError(f"unknown LFO shape {shape!r} (one of {', '.join(SHAPES)})")


def seed_for(param: str) -> int:
    """The random shape's seed for a parameter (stable across runs)."""
    return zlib.crc32(param.encode())


def check_field(field: str, value: Any) -> Any:
    """``value`` coerced for LFO field ``field``, or ValueError with a reason (OSC and presets)."""
    if field == "shape":
        if not isinstance(value, str) or value not in SHAPES:
            raise ValueError(f"shape should be one of {', '.join(SHAPES)}, got {value!r}")
        return value
    if field in ("sync", "enabled"):
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{field} should be 0/1 or True/False, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} should be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{field} should be a finite number, got {value!r}")
    lo, hi = {"rate": (MIN_RATE, MAX_RATE), "depth": (0.0, MAX_DEPTH), "depth_norm": (0.0, 1.0),
              "phase": (0.0, 1.0)}[field]
    if not lo <= value <= hi:
        raise ValueError(f"{field} {value!r} is outside {lo:g}..{hi:g}")
    return value


@dataclass(frozen=True)
class Lfo:
    """One parameter's LFO. ``rate``: beats per cycle with ``sync``, else Hz; ``depth``: the peak
    deviation, in the parameter's units (or a fraction of its control range with ``norm``);
    ``phase``: offset in cycles (0..1)."""

    shape: str = "sine"
    rate: float = 4.0
    sync: bool = True
    depth: float = 0.0
    norm: bool = False
    phase: float = 0.0
    enabled: bool = True
    seed: int = 0
    # free-running only: the wave's position is c0 cycles at t0 seconds, so a rate change (which
    # moves the anchor) never makes it jump; synced LFOs stay locked to the beat grid instead
    t0: float = 0.0
    c0: float = 0.0

    def cycles(self, seconds: float, beats: float) -> float:
        if self.sync:
            return beats / self.rate + self.phase
        return (seconds - self.t0) * self.rate + self.c0 + self.phase

    def continued_from(self, before: Lfo, seconds: float, beats: float) -> Lfo:
        """This (free-running) LFO anchored so its wave goes on from where ``before`` is now."""
        return replace(self, t0=seconds, c0=before.cycles(seconds, beats) - before.phase)

    def amplitude(self, control_range: tuple[float, float]) -> float:
        if self.norm:
            return self.depth * abs(control_range[1] - control_range[0])
        return self.depth

    def offset(self, seconds: float, beats: float, control_range: tuple[float, float]) -> float:
        """What this LFO adds to the fader value at this time (``seconds`` since the LFO clock's
        origin, ``beats`` on the tempo clock)."""
        return self.amplitude(control_range) * wave(self.shape, self.cycles(seconds, beats), self.seed)

    @property
    def active(self) -> bool:
        return self.enabled and self.depth > 0.0

    def with_field(self, field: str, value: Any) -> Lfo:
        """A copy with one (already checked) field set; ``depth_norm`` sets a normalised depth."""
        if field == "depth_norm":
            return replace(self, depth=float(value), norm=True)
        if field == "depth":
            return replace(self, depth=float(value), norm=False)
        return replace(self, **{field: value})

    def fields(self) -> dict[str, Any]:
        """The OSC/preset view: every field, the depth under ``depth`` or ``depth_norm``."""
        out: dict[str, Any] = {"shape": self.shape, "rate": self.rate, "sync": self.sync}
        out["depth_norm" if self.norm else "depth"] = self.depth
        out.update(phase=self.phase, enabled=self.enabled)
        return out

    @classmethod
    def from_fields(cls, param: str, fields: dict[str, Any]) -> Lfo:
        """Build from checked fields (``depth`` or ``depth_norm``, not both)."""
        lfo = cls(seed=seed_for(param))
        for k, v in fields.items():
            if v is not None:
                lfo = lfo.with_field(k, v)
        return lfo
