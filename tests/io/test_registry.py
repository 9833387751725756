"""Registry: spec parsing, config schema rules, factories, missing-library errors, discovery."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import annotated_types
import pytest
from pydantic import ValidationError

from bridge.io import registry
from bridge.io.base import BackendUnavailable, FrameSink, FrameSource
from bridge.io.registry import (
    SINKS,
    SOURCES,
    create_sink,
    create_source,
    list_senders,
    parse_sink_config,
    parse_sink_spec,
    parse_source_config,
    parse_source_spec,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("pattern", {"type": "pattern", "width": 512, "height": 512, "fps": 30.0}),
        ("pattern:1280x720", {"type": "pattern", "width": 1280, "height": 720}),
        ("Pattern:640x360@60", {"type": "pattern", "width": 640, "height": 360, "fps": 60.0}),
        ("pattern:@12.5", {"type": "pattern", "fps": 12.5}),
        ("ndi:TD Out", {"type": "ndi", "name": "TD Out", "address": None}),
        ("ndi:MACHINE (TD Out)", {"type": "ndi", "name": "MACHINE (TD Out)"}),
        ("ndi:127.0.0.1:5961", {"type": "ndi", "name": "", "address": "127.0.0.1:5961"}),
        ("spout:", {"type": "spout", "name": ""}),
        ("spout", {"type": "spout", "name": ""}),
        ("spout:TDSyphonSpoutOut", {"type": "spout", "name": "TDSyphonSpoutOut"}),
        ("syphon:Resolume Arena", {"type": "syphon", "name": "Resolume Arena"}),
        ("video:clip.mp4", {"type": "video", "path": "clip.mp4", "fps": None}),
        ("video:C:\\clips\\a b.mov", {"type": "video", "path": "C:\\clips\\a b.mov"}),
        ("camera:0", {"type": "camera", "index": 0}),
        ("camera:3", {"type": "camera", "index": 3}),
        (" camera ", {"type": "camera", "index": 0}),
    ],
)
def test_source_specs(spec: str, expected: dict[str, object]) -> None:
    cfg = parse_source_spec(spec)
    dumped = cfg.model_dump()
    for key, value in expected.items():
        assert dumped[key] == value, (key, dumped)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ndi", {"type": "ndi", "name": "streambridge"}),
        ("ndi:SD Out", {"type": "ndi", "name": "SD Out"}),
        ("spout", {"type": "spout", "name": "streambridge"}),
        ("spout:SD Out", {"type": "spout", "name": "SD Out"}),
        ("syphon:SD", {"type": "syphon", "name": "SD"}),
        ("video:out.mp4", {"type": "video", "path": "out.mp4"}),
        ("virtualcam", {"type": "virtualcam", "device": None}),
        ("virtualcam:/dev/video10", {"type": "virtualcam", "device": "/dev/video10"}),
        ("null", {"type": "null"}),
    ],
)
def test_sink_specs(spec: str, expected: dict[str, object]) -> None:
    dumped = parse_sink_spec(spec).model_dump()
    for key, value in expected.items():
        assert dumped[key] == value, (key, dumped)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty source spec"),
        ("   ", "empty source spec"),
        (
            "rtsp:foo",
            "unknown source kind 'rtsp'.*valid kinds: pattern, ndi, spout, syphon, video, camera",
        ),
        ("null", "unknown source kind 'null'"),
        ("clip.mp4", "a file\\? write video:clip.mp4"),
        ("ndi", "needs a sender"),
        ("ndi:", "needs a sender"),
        ("video:", "video needs a file"),
        ("camera:front", "device index"),
        ("camera:99", "index: Input should be less than or equal to 63"),
        ("pattern:huge", "WIDTHxHEIGHT"),
        ("pattern:8x8", "width: Input should be greater than or equal to 16"),
        ("pattern:@0", "fps"),
    ],
)
def test_bad_source_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_source_spec(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "camera:0",
            "unknown sink kind 'camera'.*valid kinds: ndi, spout, syphon, video, virtualcam, null",
        ),
        ("null:x", "null takes no argument"),
        ("video:", "video needs an output file"),
        ("video:out.gif", "must end with"),
    ],
)
def test_bad_sink_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sink_spec(spec)


def test_yaml_style_configs_are_discriminated_by_type_and_strict() -> None:
    cfg = parse_source_config({"type": "ndi", "name": "TD", "extra_ips": ["10.0.0.5"]})
    assert type(cfg).__name__ == "NdiSourceConfig" and cfg.extra_ips == ["10.0.0.5"]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        parse_source_config({"type": "ndi", "name": "TD", "nmae": "typo"})
    with pytest.raises(
        ValidationError, match="union_tag_invalid|does not match any of the expected tags"
    ):
        parse_source_config({"type": "webcam"})
    with pytest.raises(ValidationError, match="needs a sender 'name' or an 'address'"):
        parse_source_config({"type": "ndi"})
    sink = parse_sink_config({"type": "spout", "name": "SD Out", "max_failures": 5})
    assert type(sink).__name__ == "SpoutSinkConfig"
    with pytest.raises(ValidationError):
        parse_sink_config({"type": "spout", "max_failures": 0})


def _bounds(field) -> set[type]:
    return {type(m) for m in field.metadata}


@pytest.mark.parametrize(
    "config_cls",
    [c for c, _ in SOURCES.values()] + [c for c, _ in SINKS.values()],
    ids=lambda c: c.__name__,
)
def test_every_config_field_is_described_and_bounded(config_cls: type) -> None:
    assert config_cls.model_config.get("extra") == "forbid"
    for name, field in config_cls.model_fields.items():
        if name == "type":
            assert typing.get_origin(field.annotation) is typing.Literal
            continue
        assert field.description, f"{config_cls.__name__}.{name} has no description"
        ann = field.annotation
        args = set(typing.get_args(ann)) - {type(None)}
        base = next(iter(args)) if args and typing.get_origin(ann) is not typing.Literal else ann
        if typing.get_origin(ann) is typing.Literal or base is bool:
            continue
        kinds = _bounds(field)
        if base in (int, float):
            assert kinds & {annotated_types.Ge, annotated_types.Gt}, f"{name}: no lower bound"
            assert kinds & {annotated_types.Le, annotated_types.Lt}, f"{name}: no upper bound"
        elif base is str or typing.get_origin(base) is list:
            assert annotated_types.MaxLen in kinds, f"{config_cls.__name__}.{name}: no max length"


def test_create_returns_unopened_backends_for_every_kind(tmp_path: Path) -> None:
    for spec in ["pattern", "ndi:x", "spout:", "syphon:", f"video:{tmp_path}", "camera:0"]:
        src = create_source(parse_source_spec(spec))
        assert isinstance(src, FrameSource) and src.kind == spec.split(":")[0]
    for spec in ["ndi", "spout", "syphon", f"video:{tmp_path / 'o.mp4'}", "virtualcam", "null"]:
        sink = create_sink(parse_sink_spec(spec))
        assert isinstance(sink, FrameSink) and sink.kind == spec.split(":")[0]
    assert create_source({"type": "pattern", "fps": 5}).nominal_fps == 5
    assert type(create_sink({"type": "null"})).__name__ == "NullSink"


@pytest.mark.parametrize(
    ("module", "spec", "extra", "platform_word"),
    [
        ("NDIlib", "ndi:TD", "ndi", None),
        ("SpoutGL", "spout:TD", "spout", "Windows"),
        ("syphon", "syphon:TD", "syphon", "macOS"),
    ],
)
def test_missing_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, spec: str, extra: str, platform_word: str | None
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    source = create_source(parse_source_spec(spec))
    with pytest.raises(BackendUnavailable) as info:
        source.open()
    message = str(info.value)
    assert f'pip install "streambridge[{extra}]"' in message
    if platform_word is not None:
        assert platform_word in message
    source.close()  # safe after a failed open
    sink = create_sink(parse_sink_spec(spec.split(":")[0]))
    with pytest.raises(BackendUnavailable, match=rf"streambridge\[{extra}\]"):
        sink.open(64, 64, 30.0)
    sink.close()
    listing = list_senders(0.1)
    assert isinstance(listing[spec.split(":")[0]], str)
    assert f"streambridge[{extra}]" in listing[spec.split(":")[0]]


def test_list_senders_reports_every_kind() -> None:
    listing = list_senders(0.2)
    assert set(listing) == {"ndi", "spout", "syphon"}
    if sys.platform == "linux":
        assert "Windows-only" in listing["spout"]
        assert "macOS-only" in listing["syphon"]


def test_list_senders_reports_unexpected_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(timeout: float, extra_ips: object = ()) -> list[str]:
        raise OSError("network is down")

    monkeypatch.setattr(registry._ndi, "list_senders", broken)
    assert list_senders(0.1)["ndi"] == "listing failed: network is down"


def test_importing_the_registry_imports_no_platform_library() -> None:
    code = (
        "import sys, bridge.io.registry as r;"
        "bad = [m for m in ('NDIlib', 'SpoutGL', 'syphon', 'pyvirtualcam', 'Metal', 'objc')"
        " if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "", f"imported at module level: {out.stdout}"
