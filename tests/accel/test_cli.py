"""``streambridge engines build | list | verify`` exit codes, through ``bridge.cli.main``."""

from __future__ import annotations

import json
import shutil

import pytest

from bridge.cli import main

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def built_cache(tiny_model_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cli-cache")
    rc = main(["engines", "build", "--model", str(tiny_model_dir), "--size", "64x64", "--steps", "1",
               "--cfg", "none", "--backend", "onnxruntime", "--only", "vae_dec", "--only", "vae_enc",
               "--exporter", "torchscript", "--cache", str(cache)])
    assert rc == 0
    return cache


def test_build_then_list(built_cache, capsys):
    capsys.readouterr()
    assert main(["engines", "list", "--cache", str(built_cache)]) == 0
    out = capsys.readouterr().out
    assert "vae_dec" in out and "vae_enc" in out and "64x64" in out and "2 entries" in out
    assert main(["engines", "list", "--json", "--cache", str(built_cache)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["key"]["component"] for r in rows} == {"vae_dec", "vae_enc"}
    assert all(r["ok"] and r["key"]["runtime"].startswith("ort-") for r in rows)


def test_build_again_uses_the_cache(built_cache, tiny_model_dir, capsys):
    capsys.readouterr()
    rc = main(["engines", "build", "--model", str(tiny_model_dir), "--size", "64x64", "--steps", "1",
               "--cfg", "none", "--backend", "onnxruntime", "--only", "vae_dec", "--exporter", "torchscript",
               "--cache", str(built_cache)])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "1 shape(s) to build for onnxruntime on cpu:"
    assert any(line.startswith("cached  vae_dec") for line in lines), lines


def test_verify_exit_codes(built_cache, tmp_path, capsys):
    cache = tmp_path / "c"
    shutil.copytree(built_cache, cache)
    assert main(["engines", "verify", "--cache", str(cache)]) == 0
    engine = next((cache / "ort").glob("vae_dec-*.onnx"))
    engine.write_bytes(engine.read_bytes()[:-10])
    capsys.readouterr()
    assert main(["engines", "verify", "--cache", str(cache)]) == 1
    out = capsys.readouterr().out
    assert "BAD" in out and "quarantined" in out
    assert not engine.exists() and list((cache / "ort" / "quarantine").iterdir())
    assert main(["engines", "verify", "--cache", str(cache)]) == 0  # the rest is good


def test_empty_cache_and_env_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STREAMBRIDGE_CACHE", str(tmp_path / "from-env"))
    assert main(["engines", "list"]) == 0
    assert "from-env: no cached engines" in capsys.readouterr().out
    assert main(["engines", "verify"]) == 0


def test_user_errors(tmp_path):
    assert main(["engines", "build", "--size", "500x512", "--backend", "onnxruntime", "--cache", str(tmp_path)]) == 2
    assert main(["engines", "build", "--steps", "0", "--backend", "onnxruntime", "--cache", str(tmp_path)]) == 2
    missing = tmp_path / "no-such-model"
    assert main(["engines", "build", "--model", str(missing), "--backend", "onnxruntime", "--cache", str(tmp_path)]) == 1
    assert main(["engines"]) == 2


def test_build_with_a_missing_backend_fails_before_loading(tmp_path, monkeypatch, caplog):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    rc = main(["engines", "build", "--model", str(tmp_path / "never-loaded"), "--backend", "tensorrt",
               "--cache", str(tmp_path)])
    assert rc == 1
    assert 'pip install "streambridge[tensorrt]"' in caplog.text
    assert "never-loaded" not in caplog.text  # refused before any model loading
