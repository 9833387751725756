"""The render watchdog's config keys: defaults, and bad values named with file, line and key."""

from __future__ import annotations

import pytest

from bridge.config import DaemonConfig, load_config
from bridge.yamlio import ConfigError


def test_defaults() -> None:
    out = DaemonConfig().output
    assert out.watchdog_ms == 500 and out.on_stall == "input"


def test_bad_values_name_file_line_key_and_value(tmp_path) -> None:
    bad = tmp_path / "show.yaml"
    bad.write_text("output:\n  fps: 30\n  watchdog_ms: 0\n  on_stall: grey\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    text = str(err.value)
    assert f"{bad}:3: key 'output.watchdog_ms'" in text and "0" in text
    assert f"{bad}:4: key 'output.on_stall'" in text and "grey" in text
    good = tmp_path / "good.yaml"
    good.write_text("output:\n  watchdog_ms: 1200\n  on_stall: slate\n")
    cfg = load_config(good)
    assert cfg.output.watchdog_ms == 1200 and cfg.output.on_stall == "slate"
