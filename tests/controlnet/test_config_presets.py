"""The controlnets: config section, its preset keys and the preflight checks: every bad value is
refused with the file, line and key; a preset touching a cold ControlNet field is refused on
recall with the field named."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bridge.config import DaemonConfig, load_config
from bridge.io.ndi import NdiSourceConfig
from bridge.io.video import VideoSourceConfig
from bridge.params import controlnet_params, live_params
from bridge.preflight import check, format_problems
from bridge.presets import ColdSettings, ControlNetCold, dump_preset, parse_preset_text, source_key
from bridge.yamlio import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_a_full_entry_is_read(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """\
controlnets:
  - model: lllyasviel/control_v11f1p_sd15_depth
    scale: 0.8
    source: ndi:TD Depth
    on_loss: fade
    fade_s: 0.5
  - model: lllyasviel/control_v11p_sd15_canny
    preprocessor: canny
    canny: {low: 50, high: 120}
    enabled: false
"""))
    a, b = cfg.controlnets
    assert a.scale == 0.8 and a.preprocessor == "none" and a.on_loss == "fade" and a.fade_s == 0.5
    assert isinstance(a.source, NdiSourceConfig) and a.source.name == "TD Depth" and a.second_source
    assert b.source == "input" and not b.second_source and b.enabled is False
    assert (b.canny.low, b.canny.high) == (50, 120)


def test_source_as_mapping_and_as_spec_are_the_same() -> None:
    by_spec = DaemonConfig.model_validate({"controlnets": [{"model": "m", "source": "video:depth.mp4"}]})
    by_map = DaemonConfig.model_validate({"controlnets": [{"model": "m", "source": {"type": "video", "path": "depth.mp4"}}]})
    assert isinstance(by_spec.controlnets[0].source, VideoSourceConfig)
    assert by_spec.controlnets[0].source == by_map.controlnets[0].source


@pytest.mark.parametrize(("entry", "line", "key", "words"), [
    ("  - model: m\n    scale: 2.5\n", 3, "controlnets.0.scale", "less than or equal to 2"),
    ("  - model: m\n    preprocessor: sobel\n", 3, "controlnets.0.preprocessor", "'none', 'canny' or 'depth'"),
    ("  - model: m\n    source: carrier:pigeon\n", 3, "controlnets.0.source", "unknown source kind 'carrier'"),
    ("  - model: m\n    on_loss: freeze\n", 3, "controlnets.0.on_loss", "'hold' or 'fade'"),
    ("  - model: m\n    preprocessor: depth\n", 2, "controlnets.0", "needs depth_model"),
    ("  - model: m\n    canny: {low: 10}\n", 2, "controlnets.0", "only used by preprocessor canny"),
    ("  - model: m\n    on_loss: fade\n", 2, "controlnets.0", "for a second control source"),
    ("  - model: m\n    preprocessor: canny\n    canny: {low: -1}\n", 4, "controlnets.0.canny.low", "greater than or equal to 0"),
    ("  - model: m\n    colour: red\n", 3, "controlnets.0.colour", "unknown key"),
])
def test_bad_entries_name_file_line_and_key(tmp_path: Path, entry: str, line: int, key: str, words: str) -> None:
    path = write(tmp_path, "controlnets:\n" + entry)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert f"{path}:{line}" in text and key in text and words in text, text


def test_at_most_four() -> None:
    with pytest.raises(ValueError, match="at most 4"):
        DaemonConfig.model_validate({"controlnets": [{"model": "m"}] * 5})


def test_parameters_follow_the_config() -> None:
    params = controlnet_params(["none", "canny"])
    assert set(params) == {"controlnet_0_scale", "controlnet_0_enabled", "controlnet_1_scale", "controlnet_1_enabled",
                           "controlnet_1_canny_low", "controlnet_1_canny_high"}
    assert params["controlnet_1_canny_high"].address == "/sd/controlnet/1/canny/high"
    assert (params["controlnet_0_scale"].lo, params["controlnet_0_scale"].hi) == (0.0, 2.0)
    assert live_params([]) is live_params()  # the static table, untouched, without ControlNets
    assert "controlnet_0_scale" not in live_params()


# ---------------------------------------------------------------- presets

RUNNING = ColdSettings(model="tiny", vae=None, size=(64, 64), steps=2, frame_buffer=1, cfg="self", acceleration="none",
                       controlnets=(ControlNetCold("cn/depth", "none", source_key("ndi:TD Depth")),
                                    ControlNetCold("cn/canny", "canny", "input")))


def test_preset_controlnet_values_and_round_trip() -> None:
    preset = parse_preset_text("controlnets:\n  - scale: 0.5\n  - enabled: false\n    canny: {low: 30, high: 90}\n",
                               "p.yaml")
    assert preset.controlnet_values() == {"controlnet_0_scale": 0.5, "controlnet_1_enabled": False,
                                          "controlnet_1_canny_low": 30.0, "controlnet_1_canny_high": 90.0}
    assert preset.cold_conflicts(RUNNING) == []
    assert parse_preset_text(dump_preset(preset)) == preset
    # an empty entry leaves that ControlNet alone
    assert parse_preset_text("controlnets:\n  -\n  - scale: 1\n").controlnet_values() == {"controlnet_1_scale": 1.0}


@pytest.mark.parametrize(("text", "words"), [
    ("controlnets:\n  - model: cn/other\n", "controlnets.0.model: preset wants cn/other, the pipeline runs cn/depth"),
    ("controlnets:\n  - {}\n  - preprocessor: depth\n", "controlnets.1.preprocessor: preset wants depth"),
    ("controlnets:\n  - source: input\n", "controlnets.0.source: preset wants input, the pipeline runs ndi source"),
    ("controlnets:\n  - canny: {low: 3}\n", "controlnets.0.canny: ControlNet 0 runs preprocessor none"),
    ("controlnets:\n  - {}\n  - {}\n  - scale: 1\n", "controlnets: preset sets 3 ControlNet(s), the pipeline runs 2"),
])
def test_cold_controlnet_fields_are_refused_by_name(text: str, words: str) -> None:
    conflicts = parse_preset_text(text).cold_conflicts(RUNNING)
    assert any(words in c for c in conflicts), conflicts


def test_same_source_written_differently_is_no_conflict() -> None:
    assert parse_preset_text("controlnets:\n  - source: 'ndi:TD Depth'\n").cold_conflicts(RUNNING) == []


@pytest.mark.parametrize(("text", "line", "key"), [
    ("controlnets:\n  - scale: 3\n", 2, "controlnets.0.scale"),
    ("controlnets:\n  - scale: '1'\n", 2, "controlnets.0.scale"),
    ("controlnets:\n  - sclae: 1\n", 2, "controlnets.0.sclae"),
    ("controlnets:\n  - canny: {high: 5000}\n", 2, "controlnets.0.canny.high"),
    ("controlnets:\n  - source: 'nope:x'\n", 2, "controlnets.0.source"),
])
def test_bad_preset_entries_are_located(text: str, line: int, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_preset_text(text, "p.yaml")
    assert f"p.yaml:{line}" in str(info.value) and key in str(info.value), str(info.value)


# ---------------------------------------------------------------- preflight


def test_preflight_names_missing_weights_and_unavailable_sources(tmp_path: Path) -> None:
    cn = tmp_path / "cn"
    cn.mkdir()
    (cn / "config.json").write_text("{}")
    path = write(tmp_path, f"""\
controlnets:
  - model: {cn}
  - model: {tmp_path / "missing"}
    preprocessor: depth
    depth_model: nobody/depth-model
  - model: {cn}
    source: syphon:Depth
""")
    cfg = load_config(path)
    from bridge.config import load_config_located

    _, lines = load_config_located(path)
    problems = [p for p in check(cfg, presets=False) if p.key[0] == "controlnets"]
    text = "\n".join(format_problems(problems, str(path), lines))
    assert f"{path}:3: key 'controlnets.1.model'" in text and "ControlNet" in text
    assert f"{path}:5: key 'controlnets.1.depth_model'" in text and "nobody/depth-model" in text
    if sys.platform != "darwin":
        assert f"{path}:7: key 'controlnets.2.source'" in text and "macOS" in text
    assert "controlnets.0" not in text  # the folder with its config.json is fine


def test_command_line_overrides_keep_the_controlnets() -> None:
    from bridge.config import apply_overrides

    cfg = DaemonConfig.model_validate({"controlnets": [
        {"model": "m", "source": "ndi:TD Depth", "on_loss": "fade"},
        {"model": "c", "preprocessor": "canny", "canny": {"low": 5, "high": 9}},
    ]})
    again = apply_overrides(cfg, {"pipeline.size": "256x256"})
    assert again.controlnets == cfg.controlnets and again.pipeline.size == (256, 256)


def test_the_touchdesigner_depth_example_is_valid() -> None:
    from bridge.control.surface import ControlSurface

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "examples" / "td-depth-controlnet.yaml")
    (cn,) = cfg.controlnets
    assert cn.preprocessor == "none" and isinstance(cn.source, NdiSourceConfig) and cn.source.name == "TD Depth"
    table = live_params([c.preprocessor for c in cfg.controlnets])
    surface = ControlSurface(cfg.osc.ranges, params=table)  # its osc.ranges name a ControlNet knob
    assert surface.control_range("controlnet_0_scale") == (0.0, 1.5)
