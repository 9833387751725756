"""Acceleration asked for in the config: never a silent fallback, always a clear start-up error."""

from __future__ import annotations

import sys

import pytest

from bridge.config import DaemonConfig
from bridge.daemon import Daemon, DaemonOptions, StartupError
from tests.daemon.conftest import daemon_config


def cfg_with(tiny_model_dir, preset_dir, feedback, tmp_path, **pipeline) -> DaemonConfig:
    base = daemon_config(tiny_model_dir, preset_dir, feedback.port).model_dump()
    base["pipeline"].update(pipeline, engine_cache=str(tmp_path / "cache"))
    return DaemonConfig.model_validate(base)


def test_missing_onnx_engines_name_the_build_command(tiny_model_dir, preset_dir, feedback, tmp_path):
    d = Daemon(cfg_with(tiny_model_dir, preset_dir, feedback, tmp_path, acceleration="onnxruntime"),
               DaemonOptions(osc=False, presets=False))
    with pytest.raises(StartupError, match="streambridge engines build"):
        d.start()
    d.stop()


def test_tensorrt_missing_says_what_to_install(tiny_model_dir, preset_dir, feedback, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without TensorRT
    d = Daemon(cfg_with(tiny_model_dir, preset_dir, feedback, tmp_path, acceleration="tensorrt"),
               DaemonOptions(osc=False, presets=False))
    with pytest.raises(StartupError, match=r"tensorrt|TensorRT|CUDA"):
        d.start()
    d.stop()


def test_sequential_mode_with_engines_is_rejected_up_front(tiny_model_dir, preset_dir, feedback, tmp_path):
    with pytest.raises(ValueError, match="denoising_batch"):
        cfg_with(tiny_model_dir, preset_dir, feedback, tmp_path, acceleration="onnxruntime", denoising_batch=False)


def test_output_rate_follows_the_source_when_not_set(tiny_model_dir, preset_dir, feedback, tmp_path):
    """A 12 fps video file and no output.fps: the publisher starts at 30 and settles on 12."""
    import cv2
    import numpy as np

    from tests.daemon.conftest import wait_until

    clip = tmp_path / "clip.avi"
    wr = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 12, (64, 64))
    for k in range(24):
        wr.write(np.full((64, 64, 3), k * 10, np.uint8))
    wr.release()
    base = daemon_config(tiny_model_dir, preset_dir, feedback.port).model_dump()
    base["source"] = {"type": "video", "path": str(clip)}
    base["output"]["fps"] = None
    d = Daemon(DaemonConfig.model_validate(base), DaemonOptions(osc=False, presets=False))
    d.start()
    try:
        assert d.publisher.fps == 30.0
        assert wait_until(lambda: abs(d.publisher.fps - 12.0) < 0.6, 6), d.publisher.fps
        # the phase lock sees the processed frames' arrivals through the output mailbox
        assert wait_until(lambda: d.publisher.frame_interval is not None and d.publisher.phase_offset is not None, 3)
        assert 1 / 12 * 0.6 < d.publisher.frame_interval < 1 / 12 * 1.6, d.publisher.frame_interval
        assert 0.0 <= d.publisher.phase_offset <= 1 / d.publisher.fps
    finally:
        d.stop()
