"""The control page's switch: off by default, only with a status page, on from the command line."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bridge.cli import build_parser
from bridge.cmd_run import _overrides
from bridge.config import DaemonConfig, apply_overrides
from bridge.yamlio import ConfigError


def test_off_by_default_and_needs_the_status_page():
    assert DaemonConfig().status.control is False
    with pytest.raises(ValidationError, match="status.listen, which is not set"):
        DaemonConfig.model_validate({"status": {"control": True}})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        DaemonConfig.model_validate({"status": {"listen": "127.0.0.1:9480", "controls": True}})
    cfg = DaemonConfig.model_validate({"status": {"listen": "127.0.0.1:9480", "control": True}})
    assert cfg.status.control is True


def test_run_control_flag():
    args = build_parser().parse_args(["run", "--status", "127.0.0.1:9480", "--control"])
    assert apply_overrides(DaemonConfig(), _overrides(args)).status.control is True
    args = build_parser().parse_args(["run", "--status", "127.0.0.1:9480"])
    assert "status.control" not in _overrides(args)  # the file's setting stays
    with pytest.raises(ConfigError, match="status.listen"):
        apply_overrides(DaemonConfig(), _overrides(build_parser().parse_args(["run", "--control"])))
