"""Preset schema: shipped files, located errors, YAML 1.1 traps, cold conflicts, save format."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.params import MAX_PROMPT_CHARS, PARAMS
from bridge.presets import (
    COLD_FIELDS,
    HOT_FIELDS,
    ColdSettings,
    Preset,
    dump_preset,
    load_preset_file,
    parse_preset_text,
)
from bridge.yamlio import MAX_YAML_BYTES, ConfigError

from .conftest import SHIPPED

SHIPPED_FILES = sorted(SHIPPED.glob("*.yaml"))

RUNNING = ColdSettings(
    model="stabilityai/sd-turbo",
    vae="madebyollin/taesd",
    size=(512, 512),
    steps=2,
    frame_buffer=1,
    cfg="self",
    acceleration="none",
)


def problems_of(text: str, source: str = "look.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_preset_text(text, source)
    return info.value.problems


# ---------------------------------------------------------------- shipped presets


def test_at_least_six_presets_are_shipped() -> None:
    assert len(SHIPPED_FILES) >= 6


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda p: p.name)
def test_shipped_preset_is_valid_and_complete(path) -> None:
    preset = load_preset_file(path)
    for key in ("description", "prompt", "negative_prompt", "strength", "guidance", "delta", "seed", "transition"):
        assert getattr(preset, key) is not None, f"{path.name} does not set {key}"
    assert preset.cold_conflicts(RUNNING) == [], "shipped presets must run on the default pipeline"
    assert preset.prompt_texts(), "a preset with prompts has something to pre-warm"


def test_shipped_presets_are_distinct_looks() -> None:
    presets = [load_preset_file(p) for p in SHIPPED_FILES]
    assert len({p.prompt for p in presets}) == len(presets)
    assert len({p.seed for p in presets}) == len(presets)


# ---------------------------------------------------------------- schema follows the parameter table


@pytest.mark.parametrize("name", HOT_FIELDS)
def test_hot_field_bounds_come_from_params(name: str) -> None:
    spec = PARAMS[name]
    schema = Preset.model_json_schema()["properties"][name]
    number = next((s for s in schema.get("anyOf", [schema]) if s.get("type") in ("number", "integer")), None)
    if spec.kind is str:
        text = next(s for s in schema["anyOf"] if s.get("type") == "string")
        assert text["maxLength"] == MAX_PROMPT_CHARS
    elif spec.kind is bool:
        assert any(s.get("type") == "boolean" for s in schema["anyOf"])
        Preset.model_validate({name: True})
        with pytest.raises(ValueError):
            Preset.model_validate({name: 2})
    else:
        assert number is not None
        assert number["minimum"] == spec.lo and number["maximum"] == spec.hi
        Preset.model_validate({name: spec.hi})  # the edge is allowed
        with pytest.raises(ValueError):
            Preset.model_validate({name: spec.hi + 1})
    assert schema["description"]


def test_every_field_is_described() -> None:
    props = Preset.model_json_schema()["properties"]
    assert set(props) == {"description", *HOT_FIELDS, "lfos", *COLD_FIELDS, "controlnets"}
    assert all(p.get("description") for p in props.values())


def test_only_named_keys_are_set() -> None:
    preset = parse_preset_text("strength: 0.3\n")
    assert preset.hot_values() == {"strength": 0.3}
    assert preset.cold_values() == {}
    assert preset.prompt is None


# ---------------------------------------------------------------- located errors


def test_unknown_key_names_file_line_and_key() -> None:
    text = "prompt: a cat\nstrength: 0.5\nguidence: 3\n"
    (msg,) = problems_of(text, "presets/cat.yaml")
    assert msg.startswith("presets/cat.yaml:3: key 'guidence'")
    assert "unknown key" in msg


def test_out_of_range_value_is_located_and_quoted() -> None:
    (msg,) = problems_of("prompt: x\n\nguidance: 35\n")
    assert msg.startswith("look.yaml:3: key 'guidance'")
    assert "35" in msg


def test_all_problems_are_reported_together() -> None:
    problems = problems_of("strength: 2\nseed: -1\nsteps: 11\ncfg: half\n")
    assert [p.split(":")[1] for p in problems] == ["1", "2", "3", "4"]


def test_empty_value_is_an_error_not_unset() -> None:
    (msg,) = problems_of("prompt: x\nstrength:\n")
    assert "look.yaml:2: key 'strength'" in msg and "no value" in msg


@pytest.mark.parametrize(
    "text, key",
    [
        ("strength: '0.5'\n", "strength"),  # a quoted number is text, not a number
        ("seed: 2.0\n", "seed"),
        ("seed: true\n", "seed"),
        ("guidance: .nan\n", "guidance"),
        ("delta: .inf\n", "delta"),
        ("prompt: 42\n", "prompt"),
        ("prompt: [a, b]\n", "prompt"),
        ("prompt: \"a\\0b\"\n", "prompt"),
        ("size: 512\n", "size"),
        ("size: 512x500\n", "size"),
        ("size: 4096x512\n", "size"),
        ("size: 512*512\n", "size"),
        ("steps: 0\n", "steps"),
        ("frame_buffer: 9\n", "frame_buffer"),
        ("cfg: half\n", "cfg"),
        ("acceleration: cuda\n", "acceleration"),
        ("description: 7\n", "description"),
        (f"prompt: {'x' * (MAX_PROMPT_CHARS + 1)}\n", "prompt"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(text: str, key: str) -> None:
    problems = problems_of(text)
    assert any(f"key '{key}'" in p for p in problems), problems


def test_top_level_must_be_a_mapping() -> None:
    (msg,) = problems_of("- prompt: x\n")
    assert "mapping" in msg


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "{}\n"])
def test_empty_file_is_an_error(text: str) -> None:
    (msg,) = problems_of(text)
    assert msg.startswith("look.yaml") and "empty" in msg


# ---------------------------------------------------------------- YAML 1.1 traps


def test_prompt_no_is_rejected_as_a_boolean() -> None:
    (msg,) = problems_of("prompt: NO\n")
    assert msg.startswith("look.yaml:1: key 'prompt'")
    assert "boolean" in msg and "quote" in msg


@pytest.mark.parametrize("word", ["yes", "No", "off", "ON", "True"])
def test_yes_no_words_in_prompts_are_rejected(word: str) -> None:
    problems = problems_of(f"negative_prompt: {word}\n")
    assert any("key 'negative_prompt'" in p for p in problems)


def test_quoted_no_is_text() -> None:
    assert parse_preset_text("prompt: 'NO'\n").prompt == "NO"


def test_sexagesimal_seed_is_rejected() -> None:
    (msg,) = problems_of("prompt: x\nseed: 12:30\n")
    assert msg.startswith("look.yaml:2: key 'seed'")
    assert "750" in msg and "base-60" in msg


def test_octal_looking_seed_is_rejected() -> None:
    (msg,) = problems_of("seed: 010\n")
    assert "key 'seed'" in msg and "octal" in msg


def test_date_as_prompt_is_rejected() -> None:
    (msg,) = problems_of("prompt: 2024-01-01\n")
    assert "key 'prompt'" in msg and "date" in msg


def test_key_on_is_reported_by_its_text() -> None:
    (msg,) = problems_of("prompt: x\non: 1\n")
    assert msg.startswith("look.yaml:2: key 'on'")


def test_plain_numbers_still_work() -> None:
    preset = parse_preset_text("seed: 1230\nstrength: 1\nguidance: 1.10\ntransition: 0\n")
    assert (preset.seed, preset.strength, preset.guidance, preset.transition) == (1230, 1.0, 1.1, 0.0)
    assert isinstance(preset.strength, float)


# ---------------------------------------------------------------- hostile files


def test_alias_and_anchor_are_refused() -> None:
    (msg,) = problems_of("prompt: &p a cat\nnegative_prompt: *p\n")
    assert "look.yaml:1" in msg and "anchor" in msg
    laughs = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    assert any("not allowed" in p for p in problems_of(laughs))


def test_oversize_file_is_refused_before_parsing(tmp_path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("description: " + "x" * (MAX_YAML_BYTES + 10) + "\n")
    with pytest.raises(ConfigError, match="cap"):
        load_preset_file(path)


def test_non_utf8_file_is_refused(tmp_path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"prompt: caf\xe9\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_preset_file(path)


def test_python_tags_are_refused() -> None:
    (msg,) = problems_of("prompt: !!python/object/apply:os.system ['echo hi']\n")
    assert "look.yaml:1" in msg


# ---------------------------------------------------------------- cold fields


def test_cold_conflicts_name_each_field() -> None:
    preset = parse_preset_text(
        "prompt: x\nsteps: 4\nsize: 768x512\nmodel: stabilityai/sd-turbo\ncfg: full\nacceleration: tensorrt\n"
    )
    assert preset.cold_conflicts(RUNNING) == [
        "size: preset wants 768x512, the pipeline runs 512x512",
        "steps: preset wants 4, the pipeline runs 2",
        "cfg: preset wants full, the pipeline runs self",
        "acceleration: preset wants tensorrt, the pipeline runs none",
    ]


def test_matching_cold_fields_are_no_conflict() -> None:
    preset = parse_preset_text("size: 512x512\nsteps: 2\nframe_buffer: 1\nvae: madebyollin/taesd\n")
    assert preset.cold_conflicts(RUNNING) == []
    assert preset.size_wh() == (512, 512)


def test_vae_against_default_vae() -> None:
    preset = parse_preset_text("vae: madebyollin/taesd\n")
    running = ColdSettings("m", None, (512, 512), 2, 1, "self", "none")
    assert preset.cold_conflicts(running) == ["vae: preset wants madebyollin/taesd, the pipeline runs the default"]


# ---------------------------------------------------------------- save format


def test_dump_order_and_content() -> None:
    preset = Preset(seed=5, prompt="a cat", description="cats", strength=0.5)
    text = dump_preset(preset)
    keys = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert keys == ["description", "prompt", "strength", "seed"]
    assert parse_preset_text(text) == preset


@pytest.mark.parametrize(
    "text", ["NO", "12:30", "on", "010", "2024-01-01", "~", "", " lead", "a: b", "#x", "x\x85y", "tab\there", "a\nb\n", "\u2028", "'\""]
)
def test_dump_quotes_text_yaml_would_misread(text: str) -> None:
    preset = Preset(prompt=text, description=text)
    assert parse_preset_text(dump_preset(preset)) == preset


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=80
)


@settings(max_examples=150, deadline=None)
@given(
    prompt=_text,
    negative=st.one_of(st.none(), _text),
    strength=st.floats(0.0, 1.0),
    guidance=st.one_of(st.none(), st.floats(0.0, 20.0)),
    seed=st.integers(0, 2**31 - 1),
    description=st.one_of(st.none(), _text),
)
def test_dump_round_trip_property(prompt, negative, strength, guidance, seed, description) -> None:
    preset = Preset(
        prompt=prompt,
        negative_prompt=negative,
        strength=strength,
        guidance=guidance,
        seed=seed,
        description=description,
    )
    assert parse_preset_text(dump_preset(preset)) == preset


# ---------------------------------------------------------------- docs follow the code


def test_docs_list_every_key_with_its_range() -> None:
    doc = (SHIPPED.parent / "docs" / "presets.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines() if line.startswith("| `")}
    for name in HOT_FIELDS:
        spec = PARAMS[name]
        row = rows[f"`{name}`"]
        if spec.kind is int:
            assert f"{int(spec.lo)}..{int(spec.hi)}" in row, row
        elif spec.kind is float:
            assert f"{spec.lo:g}..{spec.hi:g}" in row, row
            assert f"{spec.default}" in row, row
        assert spec.address in row
    for name in COLD_FIELDS:
        assert f"`{name}`" in rows
