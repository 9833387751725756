"""Per-address happy paths and rejections, generated from the parameter table so that a new
parameter is covered (and a missing case fails ``test_every_address_has_cases``)."""

from __future__ import annotations

import math
from typing import Any

from bridge.control.surface import (
    DumpState,
    RecallPreset,
    SavePreset,
    SetParams,
    StepPreset,
    TempoTap,
)
from bridge.lfo import LFO_TARGETS
from bridge.params import MAX_PROMPT_CHARS, NORMALIZABLE, PARAMS

# (address, typed args [(tag, value), ...], expected batch)
Typed = list[tuple[str, Any]]
HAPPY: list[tuple[str, Typed, list[Any]]] = []
# (address, typed args, substring of the reason)
BAD: list[tuple[str, Typed, str]] = []

for spec in PARAMS.values():
    a = spec.address
    if spec.kind is str:
        HAPPY.append(
            (a, [("s", "a cat, oil painting")], [SetParams({spec.name: "a cat, oil painting"})])
        )
        HAPPY.append((a, [("s", "")], [SetParams({spec.name: ""})]))
        BAD += [
            (a, [("i", 5)], "expected a string"),
            (a, [("f", 1.0)], "expected a string"),
            (a, [("b", b"abc")], "expected a string, got blob"),
            (a, [("N", None)], "got nil"),
            (a, [("s", "x" * (MAX_PROMPT_CHARS + 1))], "longer than"),
            (a, [], "expected 1 argument"),
            (a, [("s", "a"), ("s", "b")], "got 2"),
        ]
    elif spec.kind is bool:
        HAPPY += [
            (a, [("i", 1)], [SetParams({spec.name: True})]),
            (a, [("i", 0)], [SetParams({spec.name: False})]),
            (a, [("T", True)], [SetParams({spec.name: True})]),
            (a, [("F", False)], [SetParams({spec.name: False})]),
        ]
        BAD += [
            (a, [("i", 2)], "expected 0/1 or True/False"),
            (a, [("f", 0.5)], "expected 0/1 or True/False"),
            (a, [("f", math.nan)], "expected 0/1 or True/False"),
            (a, [("s", "on")], "expected 0/1 or True/False"),
            (a, [], "expected 1 argument"),
            (a, [("i", 1), ("i", 0)], "got 2"),
        ]
    else:
        assert spec.lo is not None and spec.hi is not None
        if spec.kind is int:
            mid = int((spec.lo + spec.hi) // 2)
            HAPPY += [
                (a, [("i", mid)], [SetParams({spec.name: mid})]),
                (a, [("h", int(spec.hi))], [SetParams({spec.name: int(spec.hi)})]),
                # whole floats within the range (42 and 7 where the range allows them)
                (a, [("f", float(min(42, spec.hi)))], [SetParams({spec.name: int(min(42, spec.hi))})]),
                (a, [("d", float(min(7, spec.hi)))], [SetParams({spec.name: int(min(7, spec.hi))})]),
            ]
            BAD += [(a, [("f", 1.5)], "expected an integer"), (a, [("h", 2**40)], "outside")]
        else:
            mid = (spec.lo + spec.hi) / 2
            HAPPY += [
                (a, [("f", mid)], [SetParams({spec.name: mid})]),
                (a, [("d", mid)], [SetParams({spec.name: mid})]),
                (a, [("i", int(spec.hi))], [SetParams({spec.name: float(int(spec.hi))})]),
                (a, [("f", spec.lo)], [SetParams({spec.name: float(spec.lo)})]),
            ]
        BAD += [
            (a, [("s", "0.5")], "expected a number, got str"),
            (a, [("T", True)], "expected a number, got bool"),
            (a, [("N", None)], "got nil"),
            (a, [("b", b"\x00\x01")], "got blob"),
            (a, [("f", math.nan)], "nan"),
            (a, [("f", math.inf)], "inf"),
            (a, [("d", -math.inf)], "inf"),
            (a, [("f", spec.hi + 1)], "outside"),
            (a, [("f", spec.lo - 1)], "outside"),
            (a, [], "expected 1 argument"),
            (a, [("f", spec.lo), ("f", spec.lo)], "got 2"),
        ]

for a, spec in NORMALIZABLE.items():
    c_lo, c_hi = spec.control_range
    lo_v = int(c_lo) if spec.kind is int else float(c_lo)
    hi_v = int(c_hi) if spec.kind is int else float(c_hi)
    HAPPY += [
        (a, [("f", 0.0)], [SetParams({spec.name: lo_v})]),
        (a, [("f", 1.0)], [SetParams({spec.name: hi_v})]),
        (a, [("i", 1)], [SetParams({spec.name: hi_v})]),
    ]
    BAD += [
        (a, [("f", 1.5)], "outside 0..1"),
        (a, [("f", -0.1)], "outside 0..1"),
        (a, [("f", math.nan)], "finite"),
        (a, [("f", math.inf)], "finite"),
        (a, [("s", "0.5")], "expected a number 0..1, got string"),
        (a, [("T", True)], "got true"),
        (a, [], "expected 1 argument"),
        (a, [("f", 0.1), ("f", 0.2)], "got 2"),
    ]

HAPPY += [
    ("/sd/preset", [("s", "ambient_01")], [RecallPreset("ambient_01")]),
    ("/sd/preset", [("i", 3)], [RecallPreset(3)]),
    ("/sd/preset", [("f", 2.0)], [RecallPreset(2)]),
    ("/sd/preset/next", [], [StepPreset(1)]),
    ("/sd/preset/next", [("f", 1.0)], [StepPreset(1)]),
    ("/sd/preset/prev", [], [StepPreset(-1)]),
    ("/sd/preset/prev", [("T", True)], [StepPreset(-1)]),
    ("/sd/preset/save", [("s", "my-look_2")], [SavePreset("my-look_2")]),
    ("/sd/state", [], [DumpState()]),
    ("/sd/state", [("i", 1)], [DumpState()]),
    ("/sd/preset", [("s", "ambient_01"), ("s", "bar")], [RecallPreset("ambient_01", "bar")]),
    ("/sd/preset", [("i", 2), ("s", "beat")], [RecallPreset(2, "beat")]),
    ("/sd/preset", [("s", "ambient_01"), ("s", "now")], [RecallPreset("ambient_01", "off")]),
    ("/sd/tempo/tap", [], [TempoTap()]),
    ("/sd/tempo/tap", [("f", 1.0)], [TempoTap()]),
    ("/sd/tempo/downbeat", [], [TempoTap(downbeat=True)]),
    ("/sd/tempo/downbeat", [("T", True)], [TempoTap(downbeat=True)]),
]
for param in LFO_TARGETS:
    p = f"/sd/lfo/{param}/"
    HAPPY += [
        (p + "shape", [("s", "triangle")], [SetParams({f"lfo/{param}/shape": "triangle"})]),
        (p + "rate", [("f", 0.5)], [SetParams({f"lfo/{param}/rate": 0.5})]),
        (p + "rate", [("i", 4)], [SetParams({f"lfo/{param}/rate": 4.0})]),
        (p + "sync", [("i", 0)], [SetParams({f"lfo/{param}/sync": False})]),
        (p + "depth", [("f", 0.25)], [SetParams({f"lfo/{param}/depth": 0.25})]),
        (p + "depth_norm", [("f", 1.0)], [SetParams({f"lfo/{param}/depth_norm": 1.0})]),
        (p + "phase", [("f", 0.75)], [SetParams({f"lfo/{param}/phase": 0.75})]),
        (p + "enabled", [("T", True)], [SetParams({f"lfo/{param}/enabled": True})]),
    ]
    BAD += [
        (p + "shape", [("s", "wobble")], "shape should be one of"),
        (p + "shape", [("i", 1)], "shape should be one of"),
        (p + "rate", [("f", 0.0)], "outside"),
        (p + "rate", [("f", math.nan)], "finite"),
        (p + "sync", [("i", 2)], "0/1"),
        (p + "depth", [("f", -0.1)], "outside"),
        (p + "depth_norm", [("f", 1.5)], "outside"),
        (p + "phase", [("s", "0.5")], "should be a number"),
        (p + "enabled", [("N", None)], "got nil"),
        (p + "depth", [], "expected 1 argument"),
    ]
BAD += [
    ("/sd/preset", [("s", "../etc/passwd")], "preset names are"),
    ("/sd/preset", [("s", "")], "preset names are"),
    ("/sd/preset", [("s", "ambient\n")], "preset names are"),
    ("/sd/preset", [("i", -1)], "outside"),
    ("/sd/preset", [("f", 1.5)], "preset index"),
    ("/sd/preset", [("f", math.nan)], "preset index"),
    ("/sd/preset", [("b", b"x")], "got blob"),
    ("/sd/preset", [], "expected 1 argument"),
    ("/sd/preset", [("s", "a"), ("i", 1)], "second argument: expected one of now"),
    ("/sd/preset", [("s", "a"), ("s", "bars")], "second argument: expected one of now"),
    ("/sd/preset", [("s", "a"), ("s", "bar"), ("s", "bar")], "got 3 arguments"),
    ("/sd/tempo/tap", [("s", "x")], "trigger value"),
    ("/sd/tempo/downbeat", [("f", -1.0)], "trigger value"),
    ("/sd/preset/save", [("i", 3)], "expected a preset name, got int32"),
    ("/sd/preset/save", [("s", "bad name!")], "preset names are"),
    ("/sd/preset/save", [], "expected 1 argument"),
    ("/sd/preset/next", [("s", "go")], "trigger value"),
    ("/sd/preset/next", [("f", -1.0)], "trigger value"),
    ("/sd/preset/prev", [("f", math.nan)], "trigger value"),
    ("/sd/preset/prev", [("i", 1), ("i", 1)], "got 2"),
    ("/sd/state", [("s", "all")], "trigger value"),
    ("/sd/nope", [("f", 1.0)], "unknown address"),
    ("/composition/layers/1/video/opacity", [("f", 1.0)], "unknown address"),
    ("/sd/Strength", [("f", 0.5)], "did you mean /sd/strength?"),
    ("/strength", [("f", 0.5)], "did you mean /sd/strength?"),
    ("/sd/strength/", [("f", 0.5)], "did you mean /sd/strength?"),
    ("/sd/*", [("f", 0.5)], "patterns"),
    ("/sd/str?ngth", [("f", 0.5)], "patterns"),
    ("/sd/[s]trength", [("f", 0.5)], "patterns"),
    ("/sd/{strength,mix}", [("f", 0.5)], "patterns"),
    ("/sd/!strength", [("f", 0.5)], "patterns"),
    ("/" + "*" * 24 + "x", [], "patterns"),
]

# trigger releases: accepted, nothing to do
RELEASES: list[tuple[str, Typed]] = [
    ("/sd/preset/next", [("f", 0.0)]),
    ("/sd/preset/prev", [("F", False)]),
    ("/sd/state", [("i", 0)]),
    ("/sd/tempo/tap", [("F", False)]),
]


def case_id(case: tuple[Any, ...]) -> str:
    address, typed = case[0], case[1]
    args = ",".join(f"{t}:{v!r}"[:24] for t, v in typed)
    return f"{address[:30]}({args})"
