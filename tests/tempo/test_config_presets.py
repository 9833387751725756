"""Tempo, quantise and LFO keys in the config and in preset files: accepted as documented, and a
wrong one refused with its file, line, key and value."""

from __future__ import annotations

import pytest

from bridge.config import DaemonConfig, load_config
from bridge.presets import Preset, dump_preset, parse_preset_text
from bridge.yamlio import ConfigError

WOBBLE = """\
prompt: a red fox
transition_beats: 8
lfos:
  guidance: {shape: sine, rate: 4, depth: 0.5}
  mix:
    shape: random
    rate: 0.25
    sync: false
    depth_norm: 0.1
    phase: 0.5
    enabled: false
"""


def test_a_preset_with_lfos_and_transition_beats_round_trips() -> None:
    p = parse_preset_text(WOBBLE, "wobble.yaml")
    assert p.transition_beats == 8.0 and p.hot_values()["transition_beats"] == 8.0
    g, m = p.lfos["guidance"].to_lfo("guidance"), p.lfos["mix"].to_lfo("mix")
    assert (g.shape, g.rate, g.sync, g.depth, g.norm, g.enabled) == ("sine", 4.0, True, 0.5, False, True)
    assert (m.shape, m.rate, m.sync, m.depth, m.norm, m.phase, m.enabled) == ("random", 0.25, False, 0.1, True, 0.5, False)
    assert parse_preset_text(dump_preset(p), "again.yaml") == p


@pytest.mark.parametrize(("text", "line", "key", "what"), [
    ("prompt: x\nlfos:\n  guidanse: {shape: sine, depth: 1}\n", 3, "lfos.guidanse':", "guidanse"),
    ("prompt: x\nlfos:\n  seed: {depth: 1}\n", 3, "lfos.seed", "seed"),
    ("prompt: x\nlfos:\n  guidance:\n    shape: wobble\n", 4, "lfos.guidance.shape", "wobble"),
    ("prompt: x\nlfos:\n  guidance:\n    depth: 1\n    speed: 2\n", 5, "lfos.guidance.speed", "unknown key"),
    ("prompt: x\nlfos:\n  guidance:\n    rate: 0\n", 4, "lfos.guidance.rate", "greater than or equal"),
    ("prompt: x\nlfos:\n  mix:\n    depth: 0.1\n    depth_norm: 0.1\n", 3, "lfos.mix", "not both"),
    ("prompt: x\ntransition_beats: -1\n", 2, "transition_beats", "-1"),
])
def test_bad_lfo_keys_name_file_line_and_key(text: str, line: int, key: str, what: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_preset_text(text, "bad.yaml")
    message = str(err.value)
    assert f"bad.yaml:{line}: key '{key}" in message, message
    assert what in message


def test_tempo_and_quantise_in_the_config(tmp_path) -> None:
    path = tmp_path / "show.yaml"
    path.write_text("tempo:\n  bpm: 128\n  beats_per_bar: 3\npresets:\n  quantize: bar\n")
    cfg = load_config(path)
    assert (cfg.tempo.bpm, cfg.tempo.beats_per_bar, cfg.tempo.link, cfg.presets.quantize) == (128.0, 3, False, "bar")
    path.write_text("presets:\n  quantize: off\n")  # YAML 1.1 reads a bare off as false
    assert load_config(path).presets.quantize == "off"
    assert DaemonConfig().presets.quantize == "off" and DaemonConfig().tempo.bpm == 120.0
    path.write_text("tempo:\n  bpm: 12\n")
    with pytest.raises(ConfigError, match=r"show.yaml:2: key 'tempo.bpm'.*12"):
        load_config(path)
    path.write_text("presets:\n  quantize: half\n")
    with pytest.raises(ConfigError, match=r"show.yaml:2: key 'presets.quantize'.*half"):
        load_config(path)
    path.write_text("tempo:\n  lnk: true\n")
    with pytest.raises(ConfigError, match=r"show.yaml:2: key 'tempo.lnk': unknown key"):
        load_config(path)


def test_link_without_its_module_is_a_start_up_problem(monkeypatch) -> None:
    from bridge import preflight

    cfg = DaemonConfig.model_validate({"tempo": {"link": True}})
    real = preflight._module_present
    monkeypatch.setattr(preflight, "_module_present", lambda m: False if m == "aalink" else real(m))
    problems = preflight.backend_problems(cfg)
    assert any(p.startswith("tempo.link: ") and 'pip install "streambridge[link]"' in p for p in problems), problems
    monkeypatch.setattr(preflight, "_module_present", lambda m: True)
    assert not [p for p in preflight.backend_problems(cfg) if p.startswith("tempo.")]


def test_every_lfo_field_is_described() -> None:
    schema = Preset.model_json_schema()
    lfo = schema["$defs"]["LfoSettings"]["properties"]
    assert set(lfo) == {"shape", "rate", "sync", "depth", "depth_norm", "phase", "enabled"}
    assert all(p.get("description") for p in lfo.values())
