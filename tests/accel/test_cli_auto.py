"""``render --acceleration`` like ``run``; ``engines build`` over the config's and presets' shapes;
the daemon shows its acceleration choice."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from bridge.cli import main
from bridge.cmd_engines import BuildShape, enumerate_shapes
from bridge.presets import parse_preset_text

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for k in range(3):
        cv2.imwrite(str(folder / f"f{k}.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return folder


def _render(tiny_model_dir, frames_dir, out, *extra):
    return main(["render", str(frames_dir), str(out), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--size", "64x64", "--steps", "32,45", "--cfg", "none", *extra])


def test_render_auto_is_the_default_and_logs_its_choice(tiny_model_dir, frames_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        assert _render(tiny_model_dir, frames_dir, tmp_path / "o", "--cache", str(tmp_path / "c")) == 0
    assert "acceleration auto -> none on cpu" in caplog.text
    assert len(list((tmp_path / "o").glob("*.png"))) == 3


def test_render_and_run_fail_alike_for_a_missing_engine(tiny_model_dir, frames_dir, tmp_path, caplog):
    cache = tmp_path / "empty-cache"
    assert _render(tiny_model_dir, frames_dir, tmp_path / "o", "--acceleration", "onnxruntime",
                   "--cache", str(cache)) == 1
    render_msg = [r.getMessage() for r in caplog.records if "streambridge engines build" in r.getMessage()]
    assert render_msg and render_msg[-1].lstrip().startswith("acceleration 'onnxruntime': no onnxruntime engine")
    assert not list((tmp_path / "o").glob("*.png"))
    caplog.clear()
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {{model: '{tiny_model_dir}', device: cpu}}\n"
                   f"pipeline: {{size: 64x64, steps: [32, 45], cfg: none, engine_cache: '{cache}'}}\n"
                   "sinks: [{type: 'null'}]\nosc: {enabled: false}\n")
    assert main(["run", "--config", str(cfg), "--acceleration", "onnxruntime", "--duration", "1"]) == 1
    run_msg = [r.getMessage() for r in caplog.records if "streambridge engines build" in r.getMessage()]
    assert run_msg and run_msg[-1] == render_msg[-1]  # the same words for the same problem


def test_render_acceleration_choices_match_run(tiny_model_dir, frames_dir, tmp_path, capsys):
    from bridge.cmd_render import ACCELERATION_CHOICES
    from bridge.config import PipelineConfig

    assert set(ACCELERATION_CHOICES) == set(PipelineConfig.model_fields["acceleration"].annotation.__args__)
    with pytest.raises(SystemExit) as info:
        _render(tiny_model_dir, frames_dir, tmp_path / "o", "--acceleration", "cuda")
    assert info.value.code == 2
    assert "invalid choice: 'cuda'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--acceleration", "cuda"])
    assert "invalid choice: 'cuda'" in capsys.readouterr().err


def test_render_uses_onnxruntime_when_allowed_to_build(tiny_model_dir, frames_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        assert _render(tiny_model_dir, frames_dir, tmp_path / "o", "--allow-build", "--cache",
                       str(tmp_path / "c")) == 0
    assert "acceleration auto -> onnxruntime on cpu" in caplog.text
    eager = tmp_path / "eager"
    assert _render(tiny_model_dir, frames_dir, eager, "--acceleration", "none") == 0
    for a, b in zip(sorted((tmp_path / "o").glob("*.png")), sorted(eager.glob("*.png")), strict=True):
        diff = np.abs(cv2.imread(str(a)).astype(int) - cv2.imread(str(b)).astype(int))
        assert diff.max() <= 2  # float rounding between ONNX Runtime and torch


# ---------------------------------------------------------------------------- engines build
def test_enumerate_shapes_from_presets():
    base = BuildShape(512, 512, 2, 1, "self")
    presets = [
        ("plain", parse_preset_text("prompt: a\n")),
        ("same", parse_preset_text("prompt: b\nsteps: 2\ncfg: self\n")),
        ("wide", parse_preset_text("prompt: c\nsize: 768x432\n")),
        ("fast", parse_preset_text("prompt: d\nsteps: 1\ncfg: none\n")),
        ("wide2", parse_preset_text("prompt: e\nsize: 768x432\n")),
    ]
    shapes = enumerate_shapes(base, presets)
    assert shapes == [
        (base, ["config", "preset plain", "preset same"]),
        (BuildShape(768, 432, 2, 1, "self"), ["preset wide", "preset wide2"]),
        (BuildShape(512, 512, 1, 1, "none"), ["preset fast"]),
    ]


def test_engines_build_builds_every_shape_the_presets_reach(tiny_model_dir, tmp_path, capsys):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "a.yaml").write_text("prompt: a forest\n")
    (presets / "b.yaml").write_text("prompt: a city\nsize: 96x64\n")
    (presets / "broken.yaml").write_text("prompt: [\n")
    cache = tmp_path / "cache"
    rc = main(["engines", "build", "--model", str(tiny_model_dir), "--size", "64x64", "--steps", "1", "--cfg", "none",
               "--backend", "onnxruntime", "--only", "vae_dec", "--exporter", "torchscript", "--presets",
               str(presets), "--cache", str(cache)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 shape(s) to build for onnxruntime on cpu" in out
    assert "64x64, steps 1, frame buffer 1, cfg none  <- config, preset a" in out
    assert "96x64, steps 1, frame buffer 1, cfg none  <- preset b" in out
    assert "2 artefact(s) for 2 shape(s) ready" in out
    from stream_core.accel.cache import EngineCache

    assert sorted(st.fields["width"] for st in EngineCache(cache).entries()) == [64, 96]


def test_engines_build_reads_the_config(tiny_model_dir, tmp_path, capsys):
    cfg = tmp_path / "show.yaml"
    cfg.write_text(f"model: {{model: '{tiny_model_dir}', device: cpu}}\n"
                   "pipeline: {size: 80x64, steps: [45], cfg: none}\nsinks: [{type: 'null'}]\n"
                   f"presets: {{folder: '{tmp_path}'}}\n")
    rc = main(["engines", "build", "--config", str(cfg), "--only", "vae_enc", "--exporter", "torchscript",
               "--cache", str(tmp_path / "c")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "1 shape(s) to build for onnxruntime on cpu" in out  # auto on the CPU builds for onnxruntime
    assert "80x64, steps 1, frame buffer 1, cfg none  <- config" in out


def test_engines_build_for_none_is_a_clear_error(tmp_path, caplog):
    cfg = tmp_path / "eager.yaml"
    cfg.write_text("pipeline: {acceleration: none}\nsinks: [{type: 'null'}]\n")
    assert main(["engines", "build", "--config", str(cfg), "--cache", str(tmp_path)]) == 2
    assert "nothing to build" in caplog.text


# ---------------------------------------------------------------------------- the daemon shows it
def test_daemon_logs_and_shows_its_acceleration(tiny_model_dir, tmp_path, caplog):
    from bridge.config import DaemonConfig
    from bridge.daemon import Daemon, DaemonOptions

    cfg = DaemonConfig.model_validate({
        "model": {"model": str(tiny_model_dir), "device": "cpu"},
        "pipeline": {"size": [64, 64], "steps": [32, 45], "engine_cache": str(tmp_path / "c")},
        "sinks": [{"type": "null"}], "osc": {"enabled": False},
    })
    assert cfg.pipeline.acceleration == "auto"  # the default
    d = Daemon(cfg, DaemonOptions(osc=False, presets=False))
    with caplog.at_level(logging.INFO):
        d.start()
    try:
        acc = d.page_status()["acceleration"]
        assert acc["requested"] == "auto" and acc["backend"] == "none" and acc["device"] == "cpu"
        assert "no exported ONNX graphs cached" in acc["reason"]
        assert f"acceleration auto -> none on cpu: {acc['reason']}" in caplog.text
    finally:
        d.stop()


def test_doctor_shows_what_auto_picks_on_this_machine():
    from bridge.cmd_doctor import checks
    from stream_core.accel.auto import machine_choice

    rows = {label: (ok, text) for ok, label, text in checks()}
    ok, text = rows["acceleration"]
    choice = machine_choice("auto")
    assert ok is True and text.startswith(f"auto -> {choice.label} on {choice.device}: ")
