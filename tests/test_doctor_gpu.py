"""`streambridge doctor --gpu`, the self-test users run before a show, on the CPU with the tiny model.

The same code runs the real architectures on a GPU (``--arch sd-turbo``); here it must pass on a
healthy build, and fail, naming the error, when a control tick breaks during a preset recall with
a transition (what the CUDA morph crash did on the first GPU run).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.selftest import PRESET_B, SelfTestOptions, format_report, run_selftest

REPO = Path(__file__).resolve().parents[1]


def test_doctor_gpu_runs_the_daemon_path_and_passes(tmp_path):
    out = tmp_path / "doctor.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "doctor", "--gpu", "--arch", "tiny", "--device", "cpu", "--seconds", "4",
         "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith("PASS")
    for label in ("processed", "output", "latency", "start-up", "peak VRAM", "acceleration"):
        assert label in proc.stdout
    report = json.loads(out.read_text())
    fig = report["figures"]
    assert report["passed"] and report["failures"] == [] and report["osc_errors"] == []
    assert fig["processed_fps"] > 1 and fig["output_fps"] > 1 and fig["frames_processed"] > 4
    assert fig["latency_p50_ms"] > 0 and fig["latency_p95_ms"] >= fig["latency_p50_ms"]
    assert fig["startup_s"] > 0 and fig["osc_messages_sent"] > 20
    assert fig["acceleration"]["configured"] and fig["acceleration"]["runner"]
    assert fig["tensors_off_device"] == [] and "tensors elsewhere none" in proc.stdout
    # the preset recall with a transition ran and ended (the daemon logged the morph)
    assert "selftest-b: morphing over" in proc.stderr and "selftest-b: morph done" in proc.stderr


def test_a_failing_tick_during_the_recall_with_transition_makes_it_fail(monkeypatch):
    """The CUDA morph crash, simulated: every control tick raises once the transition preset is
    recalled. The self-test must fail, show the error line, and say that the recall never ended."""
    from bridge.live import LiveController

    real_tick = LiveController.tick

    def tick(self, now=None):
        if self.current_preset == "selftest-b":  # from the tick after the recall started, as on CUDA
            raise RuntimeError("Expected all tensors to be on the same device, cuda:0 and cpu")
        real_tick(self, now)

    monkeypatch.setattr(LiveController, "tick", tick)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)  # a quiet logging set-up must not hide the errors from the check
    try:
        result = run_selftest(SelfTestOptions(arch="tiny", device="cpu", seconds=3.0, min_fps=1e6))
    finally:
        root.setLevel(level)
    text = format_report(result)
    assert not result.passed and text.rstrip().endswith("FAIL")
    assert any("same device" in line for line in result.log_lines), result.log_lines
    assert any("error line(s) or traceback(s)" in f for f in result.failures)
    assert any("selftest-b" in f and "did not finish" in f for f in result.failures), result.failures
    assert any("under --min-fps" in f for f in result.failures)
    assert "same device" in text and f"/sd/guidance {PRESET_B['guidance']}" in text
    assert "[x" in text  # the repeated line is shown once, with its count


def test_no_cuda_is_a_clear_failure_not_a_crash():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    result = run_selftest(SelfTestOptions(arch="tiny", device="cuda", seconds=1.0))
    assert not result.passed
    assert result.failures and "no CUDA GPU" in result.failures[0]
