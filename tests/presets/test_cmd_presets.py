"""``streambridge presets check|list`` through bridge.cli.main."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.cli import main

from .conftest import SHIPPED

pytestmark = pytest.mark.usefixtures("restore_logging")


def test_check_shipped_presets_exits_0(capsys) -> None:
    assert main(["presets", "check", str(SHIPPED)]) == 0
    out = capsys.readouterr().out
    assert "all good" in out


def test_check_reports_located_errors_and_exits_1(tmp_path: Path, capsys) -> None:
    (tmp_path / "good.yaml").write_text("prompt: fine\n")
    (tmp_path / "typo.yaml").write_text("prompt: fine\nstrenght: 0.5\n")
    (tmp_path / "trap.yaml").write_text("prompt: NO\n")
    assert main(["presets", "check", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert f"{tmp_path / 'typo.yaml'}:2: key 'strenght'" in captured.err
    assert f"{tmp_path / 'trap.yaml'}:1: key 'prompt'" in captured.err
    assert "2 file(s) with problems, 1 preset(s) good" in captured.out


def test_check_missing_folder_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["presets", "check", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_check_empty_folder_is_ok_with_a_warning(tmp_path: Path, capsys) -> None:
    assert main(["presets", "check", str(tmp_path)]) == 0
    assert "no preset files" in capsys.readouterr().err


def test_list_shows_index_name_description(tmp_path: Path, capsys) -> None:
    (tmp_path / "b.yaml").write_text("description: second look\nseed: 1\n")
    (tmp_path / "A.yaml").write_text("description: first look\nsteps: 4\n")
    assert main(["presets", "list", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["0", "A", "first", "look", "[steps=4]"]
    assert lines[1].split() == ["1", "b", "second", "look"]


def test_list_exits_1_when_a_file_is_broken(tmp_path: Path, capsys) -> None:
    (tmp_path / "ok.yaml").write_text("seed: 1\n")
    (tmp_path / "broken.yaml").write_text("seed: [\n")
    assert main(["presets", "list", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "ok" in captured.out and "broken.yaml" in captured.err


def test_presets_without_action_prints_usage(capsys) -> None:
    assert main(["presets"]) == 2
    assert "check" in capsys.readouterr().err
