"""The OSC command table: decoded packets in, typed commands (or one rejection) out. Pure.

Rules, in the order they are applied to each message:

1. An address containing any OSC pattern character (``* ? [ ] { } ! ,``) is rejected before any
   lookup: only exact addresses are accepted (pattern matching is what froze python-osc).
2. The address must be in the table (:meth:`ControlSurface.addresses`).
3. Arguments are validated for that address: arity, type, finiteness and range, using
   :meth:`bridge.params.ParamSpec.check` for parameters (ints are accepted for floats, integral
   floats for ints). Nothing is clamped: a bad value is rejected with a reason.

A bundle is all-or-nothing: the first bad element rejects the whole packet (its address and reason
are reported) and nothing in it is applied. A good packet becomes ONE batch: a list of commands
in arrival order, adjacent :class:`SetParams` merged into one (later values win), to be applied
together between two frames.

Trigger addresses (``/sd/preset/next``, ``/sd/preset/prev``, ``/sd/state``) take no argument.
Because TouchOSC buttons and TouchDesigner pulse channels always send a value (1 on press, 0 on
release), they also accept one value: ``T``, ``I`` or a number > 0 fires; ``F`` or 0 is a button
release and does nothing (it is accepted, not rejected).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.control.codec import (
    DecodeError,
    Impulse,
    OscArg,
    OscMessage,
    OscPacket,
    _short_f32,
    decode_packet,
    iter_messages,
)
from bridge.lfo import FIELDS as LFO_FIELDS
from bridge.lfo import LFO_TARGETS, check_field
from bridge.params import NORMALIZABLE, PARAMS, ParamSpec, denormalize, normalizable

_I32 = struct.Struct(">i")
PATTERN_CHARS = "*?[]{}!,"
_PATTERN_RE = re.compile(r"[*?\[\]{}!,]")
PRESET_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # same rule as bridge.presets.NAME_RE
MAX_REPORTED_ADDRESS = 128  # longer addresses are cut in error replies

ADDR_PRESET = "/sd/preset"
ADDR_PRESET_NEXT = "/sd/preset/next"
ADDR_PRESET_PREV = "/sd/preset/prev"
ADDR_PRESET_SAVE = "/sd/preset/save"
ADDR_STATE = "/sd/state"
ADDR_TAP = "/sd/tempo/tap"
ADDR_DOWNBEAT = "/sd/tempo/downbeat"
LFO_PREFIX = "/sd/lfo/"
#: per-call quantisation of a recall (``/sd/preset NAME bar``); ``now``/``off``: at once
RECALL_QUANTIZE = ("now", "off", "beat", "bar")


def lfo_key(param: str, field: str) -> str:
    """The :class:`SetParams` key of an LFO field (``lfo/guidance/depth``): LFO settings coalesce
    like fader values (latest wins), so a knob on an LFO's depth cannot fill the command queue."""
    return f"lfo/{param}/{field}"


def parse_lfo_key(key: str) -> tuple[str, str] | None:
    """``lfo/<param>/<field>`` -> (param, field); None for a plain parameter name."""
    if not key.startswith("lfo/"):
        return None
    _, param, field = key.split("/", 2)
    return param, field


# ----------------------------------------------------------------------------------------------
# commands


@dataclass(frozen=True)
class SetParams:
    """Set live parameters: parameter name (``bridge.params.PARAMS`` key) -> validated value."""

    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecallPreset:
    """Recall a preset by name (``str``) or by index into the sorted preset list (``int`` >= 0).
    ``quantize``: ``beat``/``bar`` start it on the next beat/bar, ``now`` at once, None: the
    configured default (``presets.quantize``)."""

    ref: str | int
    quantize: str | None = None


@dataclass(frozen=True)
class StepPreset:
    """Recall the next (+1) or previous (-1) preset."""

    delta: int


@dataclass(frozen=True)
class SavePreset:
    """Save the current live state as a preset with this (already validated) name. An existing
    preset is only replaced when ``overwrite`` is set (``/sd/preset/save NAME 1``)."""

    name: str
    overwrite: bool = False


@dataclass(frozen=True)
class DumpState:
    """Send every parameter's current value to the feedback targets."""


@dataclass(frozen=True)
class TempoTap:
    """One tap of tap tempo, or with ``downbeat`` the first beat of a bar. ``at``: when it arrived
    (stamped on receipt by the live controller, so the frame rate does not add jitter)."""

    at: float | None = None
    downbeat: bool = False


Command = SetParams | RecallPreset | StepPreset | SavePreset | DumpState | TempoTap
Batch = list[Command]


@dataclass(frozen=True)
class Rejected:
    """A packet that was not applied. ``malformed`` is True when it was not valid OSC at all."""

    address: str
    reason: str
    malformed: bool = False


class _Invalid(Exception):
    """Raised by handlers; becomes a :class:`Rejected`."""


# ----------------------------------------------------------------------------------------------
# helpers

_TAG_NAMES = {
    "i": "int32",
    "f": "float32",
    "s": "string",
    "b": "blob",
    "T": "true",
    "F": "false",
    "N": "nil",
    "I": "impulse",
    "h": "int64",
    "d": "float64",
}
_KIND_NAMES = {str: "a string", float: "a number", int: "an integer", bool: "0/1 or T/F"}


def _report_address(address: str) -> str:
    if len(address) <= MAX_REPORTED_ADDRESS:
        return address
    return address[:MAX_REPORTED_ADDRESS] + "..."


def _one_arg(msg: OscMessage, expected: str) -> tuple[OscArg, str]:
    if len(msg.args) != 1:
        raise _Invalid(f"expected 1 argument ({expected}), got {len(msg.args)}")
    return msg.args[0], msg.typetags[0]


def _is_number(value: OscArg) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_ranges(
    ranges: Mapping[str, Any] | None, params: Mapping[str, ParamSpec] | None = None
) -> dict[str, tuple[float, float]]:
    """Check ``/sd/norm`` control ranges: ``{param_name: (lo, hi)}``, each end finite and inside
    the parameter's hard range, ``lo != hi`` (``lo > hi`` inverts the fader). Raises ValueError
    naming the bad entry. ``params`` is the parameter table (default: the static one)."""
    out: dict[str, tuple[float, float]] = {}
    table = NORMALIZABLE if params is None else normalizable(dict(params))
    numeric = {spec.name: spec for spec in table.values()}
    for name, rng in (ranges or {}).items():
        spec = numeric.get(name)
        if spec is None:
            known = ", ".join(sorted(numeric))
            raise ValueError(f"osc range for {name!r}: not a numeric parameter (known: {known})")
        try:
            lo, hi = rng
        except (TypeError, ValueError):
            raise ValueError(f"osc range for {name!r}: expected [lo, hi], got {rng!r}") from None
        for end in (lo, hi):
            if not _is_number(end) or not math.isfinite(end):
                raise ValueError(f"osc range for {name!r}: {end!r} is not a finite number")
            assert spec.lo is not None and spec.hi is not None
            if not spec.lo <= end <= spec.hi:
                raise ValueError(
                    f"osc range for {name!r}: {end!r} is outside the hard range "
                    f"{spec.lo:g}..{spec.hi:g}"
                )
        if lo == hi:
            raise ValueError(f"osc range for {name!r}: lo and hi are both {lo!r}")
        out[name] = (float(lo), float(hi))
    return out


# ----------------------------------------------------------------------------------------------
# the table


class ControlSurface:
    """Validates decoded OSC packets against the address table.

    ``ranges`` narrows the 0..1 mapping of ``/sd/norm/<param>`` per parameter name (see
    :func:`validate_ranges`); parameters without an entry map onto their hard range. ``params``
    is the live parameter table (default: the static one; :func:`bridge.params.live_params` adds
    the configured ControlNets' parameters).
    """

    def __init__(self, ranges: Mapping[str, Any] | None = None,
                 params: Mapping[str, ParamSpec] | None = None) -> None:
        self.params: dict[str, ParamSpec] = dict(PARAMS if params is None else params)
        self.by_address: dict[str, ParamSpec] = {p.address: p for p in self.params.values()}
        self.normalizable: dict[str, ParamSpec] = normalizable(self.params)
        self.ranges = validate_ranges(ranges, self.params)
        self._handlers: dict[str, Callable[[OscMessage], Command | None]] = {}
        for spec in self.params.values():
            self._handlers[spec.address] = self._param_handler(spec)
        for address, spec in self.normalizable.items():
            self._handlers[address] = self._norm_handler(spec)
        self._handlers[ADDR_PRESET] = self._recall
        self._handlers[ADDR_PRESET_SAVE] = self._save
        self._handlers[ADDR_PRESET_NEXT] = self._trigger(lambda: StepPreset(1))
        self._handlers[ADDR_PRESET_PREV] = self._trigger(lambda: StepPreset(-1))
        self._handlers[ADDR_STATE] = self._trigger(DumpState)
        self._handlers[ADDR_TAP] = self._trigger(TempoTap)
        self._handlers[ADDR_DOWNBEAT] = self._trigger(lambda: TempoTap(downbeat=True))
        for param in LFO_TARGETS:
            for lfo_field in LFO_FIELDS:
                self._handlers[f"{LFO_PREFIX}{param}/{lfo_field}"] = self._lfo_handler(param, lfo_field)
        self._lower = {a.lower(): a for a in self._handlers}
        # the fast path: what every fader sends, one message with one f or i argument
        self._fast: dict[bytes, ParamSpec] = {
            spec.address.encode(): spec for spec in self.params.values() if spec.kind is not str
        }
        # ...and the /sd/norm/<param> form of each number (half of what a TouchDesigner panel sends)
        self._fast_norm: dict[bytes, ParamSpec] = {address.encode(): spec for address, spec in self.normalizable.items()}

    @property
    def addresses(self) -> list[str]:
        """Every accepted address, sorted."""
        return sorted(self._handlers)

    def control_range(self, name: str) -> tuple[float, float]:
        """The 0..1 control range of a numeric parameter."""
        if name in self.ranges:
            return self.ranges[name]
        return self.params[name].control_range

    # -- entry points ---------------------------------------------------------------------------

    def process(self, data: bytes) -> Batch | Rejected:
        """Decode one datagram and validate it: a batch of commands, or exactly one rejection."""
        fast = self._fast_path(data)
        if fast is not None:
            return fast
        try:
            packet = decode_packet(data)
        except DecodeError as exc:
            return Rejected(_report_address(exc.address), exc.reason, malformed=True)
        return self.validate(packet)

    def _fast_path(self, data: bytes) -> Batch | None:
        """A single message to a parameter address with one valid ``f`` or ``i`` argument,
        decoded without building any intermediate object (a third of the full path's cost).
        Anything else, including every value that would be refused, returns None and goes
        through the full decoder and table, so the result is always the same as theirs."""
        nul = data.find(b"\x00", 1, 68)
        if nul < 0 or data[:1] != b"/":
            return None
        tag_at = (nul + 4) & ~3
        if len(data) != tag_at + 8 or data.count(b"\x00", nul, tag_at) != tag_at - nul:
            return None
        address = data[:nul]
        spec = self._fast.get(address)
        norm = None if spec is not None else self._fast_norm.get(address)
        if spec is None and norm is None:
            return None
        tag = data[tag_at : tag_at + 4]
        if tag == b",f\x00\x00":
            value: float | int = _short_f32(data, tag_at + 4)
        elif tag == b",i\x00\x00":
            value = _I32.unpack_from(data, tag_at + 4)[0]
        else:
            return None
        try:
            if norm is not None:
                return [self._norm_set(norm, value)]
            return [SetParams({spec.name: spec.check(value)})]  # type: ignore[union-attr]
        except (ValueError, _Invalid):
            return None

    def validate(self, packet: OscPacket) -> Batch | Rejected:
        """Validate a decoded message or bundle, all-or-nothing."""
        batch: Batch = []
        for msg in iter_messages(packet):
            result = self.validate_message(msg)
            if isinstance(result, Rejected):
                return result
            if result is None:
                continue
            if isinstance(result, SetParams) and batch and isinstance(batch[-1], SetParams):
                batch[-1] = SetParams({**batch[-1].values, **result.values})
            else:
                batch.append(result)
        return batch

    def validate_message(self, msg: OscMessage) -> Command | None | Rejected:
        """One message: a command, None (accepted, nothing to do: a button release) or rejected."""
        address = msg.address
        if _PATTERN_RE.search(address) is not None:
            return Rejected(
                _report_address(address),
                "OSC address patterns (* ? [ ] { } ! ,) are not accepted: use an exact address",
            )
        handler = self._handlers.get(address)
        if handler is None:
            return Rejected(_report_address(address), self._unknown_reason(address))
        try:
            return handler(msg)
        except _Invalid as exc:
            return Rejected(address, str(exc))

    # -- handlers -------------------------------------------------------------------------------

    def _unknown_reason(self, address: str) -> str:
        if address.startswith(("/sd/controlnet/", "/sd/norm/controlnet/")):
            indices = sorted({int(p.address.split("/")[3]) for p in self.params.values()
                              if p.address.startswith("/sd/controlnet/")})
            part = address.split("/")[4 if address.startswith("/sd/norm/") else 3] if address.count("/") >= 3 else ""
            if not indices:
                return "unknown address (no ControlNet is configured: see controlnets: in the config)"
            if not part.isdigit() or int(part) not in indices:
                return f"unknown address: no ControlNet {part[:16]!r} (configured: {', '.join(map(str, indices))})"
            if "/canny/" in address:
                return f"unknown address: ControlNet {part} has no canny thresholds (its preprocessor is not canny)"
        for candidate in (address.rstrip("/"), "/sd" + address, address.lower()):
            hit = self._lower.get(candidate.lower()) if candidate else None
            if hit is not None and hit != address:
                return f"unknown address (did you mean {hit}?)"
        return "unknown address"

    @staticmethod
    def _param_handler(spec: ParamSpec) -> Callable[[OscMessage], Command | None]:
        expected = _KIND_NAMES[spec.kind]

        def handle(msg: OscMessage) -> Command:
            value, tag = _one_arg(msg, expected)
            if tag in "bNI":
                raise _Invalid(f"expected {expected}, got {_TAG_NAMES[tag]}")
            try:
                return SetParams({spec.name: spec.check(value)})
            except ValueError as exc:
                raise _Invalid(str(exc)) from None

        return handle

    def _norm_handler(self, spec: ParamSpec) -> Callable[[OscMessage], Command | None]:
        def handle(msg: OscMessage) -> Command:
            x, tag = _one_arg(msg, "a number 0..1")
            if not _is_number(x):
                raise _Invalid(f"expected a number 0..1, got {_TAG_NAMES.get(tag, tag)}")
            assert isinstance(x, (int, float))
            return self._norm_set(spec, x)

        return handle

    def _norm_set(self, spec: ParamSpec, x: float) -> SetParams:
        """``/sd/norm/<param> x``: x in 0..1 mapped onto the control range (raises _Invalid)."""
        if not math.isfinite(x):
            raise _Invalid(f"expected a finite number, got {x!r}")
        if not 0.0 <= x <= 1.0:
            raise _Invalid(f"normalized value {x!r} is outside 0..1")
        lo, hi = self.control_range(spec.name)
        value = denormalize(spec, float(x), (lo, hi))
        value = min(max(value, min(lo, hi)), max(lo, hi))  # no float overshoot past the range
        if spec.kind is int:
            value = int(value)
        try:
            return SetParams({spec.name: spec.check(value)})
        except ValueError as exc:
            raise _Invalid(str(exc)) from None

    @staticmethod
    def _lfo_handler(param: str, lfo_field: str) -> Callable[[OscMessage], Command | None]:
        def handle(msg: OscMessage) -> Command:
            value, tag = _one_arg(msg, f"the LFO's {lfo_field}")
            if tag in "bNI":
                raise _Invalid(f"expected a value for {lfo_field}, got {_TAG_NAMES[tag]}")
            try:
                return SetParams({lfo_key(param, lfo_field): check_field(lfo_field, value)})
            except ValueError as exc:
                raise _Invalid(str(exc)) from None

        return handle

    @staticmethod
    def _recall(msg: OscMessage) -> Command:
        quantize: str | None = None
        if len(msg.args) > 2:
            raise _Invalid(f"expected a preset name or index, and optionally now/beat/bar; got {len(msg.args)} arguments")
        if len(msg.args) == 2:
            mode = msg.args[1]
            if not isinstance(mode, str) or mode not in RECALL_QUANTIZE:
                raise _Invalid(f"second argument: expected one of {', '.join(RECALL_QUANTIZE)}, got {mode!r}")
            quantize = "off" if mode == "now" else mode
            msg = OscMessage(msg.address, msg.typetags[:1], msg.args[:1])
        ref, tag = _one_arg(msg, "a preset name or index")
        if isinstance(ref, str):
            if not PRESET_NAME_RE.fullmatch(ref):
                raise _Invalid("preset names are 1-64 characters A-Z a-z 0-9 _ -")
            return RecallPreset(ref, quantize)
        if _is_number(ref):
            assert isinstance(ref, (int, float))
            if isinstance(ref, float) and (not math.isfinite(ref) or ref != int(ref)):
                raise _Invalid(f"expected a preset index (integer >= 0), got {ref!r}")
            index = int(ref)
            if not 0 <= index < 2**31:
                raise _Invalid(f"preset index {index} is outside 0..{2**31 - 1}")
            return RecallPreset(index, quantize)
        raise _Invalid(f"expected a preset name or index, got {_TAG_NAMES.get(tag, tag)}")

    @staticmethod
    def _save(msg: OscMessage) -> Command:
        if len(msg.args) not in (1, 2):
            raise _Invalid(
                f"expected 1 argument (a preset name) or 2 (name, 1 to overwrite), got {len(msg.args)}"
            )
        name, tag = msg.args[0], msg.typetags[0]
        if not isinstance(name, str):
            raise _Invalid(f"expected a preset name, got {_TAG_NAMES.get(tag, tag)}")
        if not PRESET_NAME_RE.fullmatch(name):
            raise _Invalid("preset names are 1-64 characters A-Z a-z 0-9 _ -")
        overwrite = False
        if len(msg.args) == 2:
            flag = msg.args[1]
            if flag is True or flag is False:
                overwrite = flag
            elif _is_number(flag) and flag in (0, 1):
                overwrite = bool(flag)
            else:
                raise _Invalid(f"second argument: expected 1 (overwrite) or 0, got {flag!r}")
        return SavePreset(name, overwrite)

    @staticmethod
    def _trigger(make: Callable[[], Command]) -> Callable[[OscMessage], Command | None]:
        def handle(msg: OscMessage) -> Command | None:
            if not msg.args:
                return make()
            if len(msg.args) > 1:
                raise _Invalid(f"expected no argument (or one trigger value), got {len(msg.args)}")
            value = msg.args[0]
            if value is True or isinstance(value, Impulse):
                return make()
            if value is False:
                return None
            if _is_number(value):
                assert isinstance(value, (int, float))
                if math.isfinite(value) and value >= 0:
                    return make() if value > 0 else None
            raise _Invalid(
                "expected no argument, or one trigger value (T, I or a number > 0; F or 0 is "
                f"ignored), got {value!r}"
            )

        return handle
