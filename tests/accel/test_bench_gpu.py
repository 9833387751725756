"""bench/gpu.py must not rot between GPU sessions: its CPU smoke mode runs here on every CI run.

A GPU session has a few minutes of device time; a crash in the benchmark script there would waste
them. This runs the same code path (scenarios, our pipeline, the diffusers baseline, U-Net call
counting, skip reasons, the JSON report) on the tiny architecture at 64 px on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "gpu_bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--arch", "tiny", "--quick",
         "--size", "64", "--variants", "eager,graphs,tensorrt,diffusers", "--out", str(out)],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "scenario" in proc.stdout and "JSON:" in proc.stdout  # the table is printed
    return json.loads(out.read_text())


def _row(report: dict, scenario: str, variant: str) -> dict:
    rows = [r for r in report["results"] if r["scenario"] == scenario and r["variant"] == variant]
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize(("scenario", "steps"), [("sd-turbo-1step", 1), ("sd15-lcm-4step", 4)])
def test_ours_and_diffusers_run_the_same_unet_steps(report, scenario, steps):
    ours, theirs = _row(report, scenario, "eager"), _row(report, scenario, "diffusers")
    assert ours["unet_steps_per_frame"] == steps and ours["unet_batch"] == steps
    assert ours["unet_calls_per_frame"] == 1  # the whole stream batch in one U-Net call
    assert theirs["unet_steps_per_frame"] == steps  # the baseline's strength/steps give the same work
    for r in (ours, theirs):
        assert r["finite"] and r["fps"] > 0 and r["ms_min"] <= r["ms_per_frame"] <= r["ms_max"]
    assert "x diffusers" in ours["speedup_note"]


def test_unavailable_variants_are_skipped_with_their_reason(report):
    assert _row(report, "sd-turbo-1step", "graphs")["skipped"] == "CUDA graphs need a CUDA GPU"
    reason = _row(report, "sd-turbo-1step", "tensorrt")["skipped"]
    assert "tensorrt" in reason.lower() and ("install" in reason or "CUDA" in reason or "import" in reason)


def test_report_records_the_environment(report):
    env = report["env"]
    assert env["device"] == "cpu" and env["torch"] and env["diffusers"] and env["date"]
    assert report["args"]["size"] == "64" and report["args"]["arch"] == "tiny"
