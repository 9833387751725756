"""bench/gpu.py must not rot between GPU sessions: its CPU smoke mode runs here on every CI run.

A GPU session has a few minutes of device time; a crash in the benchmark script there would waste
them. This runs the same code path (scenarios, our pipeline, the diffusers baseline, U-Net call
counting, skip reasons, the paper's ratios, cold/warm start-up in fresh processes, the prompt-change
pacing, the targets, the JSON report, a clean stop on SIGTERM) on the tiny architecture at 64 px
on the CPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "gpu_bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--arch", "tiny", "--quick",
         "--size", "64", "--variants", "eager,graphs,auto,fp8,tensorrt,diffusers", "--out", str(out)],
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


def test_unbuilt_variants_say_so_or_run(report):
    """auto and fp8 run on CUDA; elsewhere they are skipped with a plain reason."""
    for scenario in ("sd-turbo-1step", "sd15-lcm-4step"):
        for variant in ("auto", "fp8"):
            row = _row(report, scenario, variant)
            if row.get("skipped"):
                assert ("not available in this build" in row["skipped"] or "FP8 needs" in row["skipped"]
                        or "measured on CUDA only" in row["skipped"])
            else:
                assert row["fps"] > 0 and row["finite"] and math.isfinite(row["psnr_vs_eager_db"])


def test_paper_ratios_are_measured(report):
    r = report["ratios"]
    sv, sf = r["stream_vs_sequential"], r["self_vs_full_cfg"]
    assert r["steps"] == 4 and r["variant"] == "eager"
    assert sv["stream"]["denoising_batch"] and not sv["sequential"]["denoising_batch"]
    assert sv["ratio"] == pytest.approx(sv["stream"]["fps"] / sv["sequential"]["fps"], rel=0.01)
    assert sf["self"]["unet_batch"] == 4 and sf["full"]["unet_batch"] == 8
    assert sf["ratio"] == pytest.approx(sf["self"]["fps"] / sf["full"]["fps"], rel=0.01)


def test_cold_and_warm_start_up_each_in_a_fresh_process(report):
    st = report["startup"]
    assert st["variant"] == "eager"  # no compiling backend on the CPU smoke run
    for phase in ("cold", "warm"):
        p = st[phase]
        assert p["build_to_first_frame_s"] > 0 and p["process_s"] >= p["build_to_first_frame_s"]
        assert p["wall_s"] >= p["process_s"] > 0


def test_prompt_change_pacing_and_targets(report):
    hitch = _row(report, "sd-turbo-1step", "eager")["prompt_hitch"]
    busy = hitch["with_changes"]
    assert hitch["period_s"] == 0.1 and busy["prompts_encoded"] >= 2 and busy["changes_applied"] >= 1
    assert busy["max_over_median"] >= 1 and busy["frames"] > 3 and hitch["quiet"]["changes_applied"] == 0
    assert hitch["verdict"] in ("PASS", "MISS")
    fps_targets = {t["scenario"]: t for t in report["targets"] if "target_fps" in t}
    assert fps_targets["sd-turbo-1step"]["target_fps"] == 250 and fps_targets["sd15-lcm-4step"]["target_fps"] == 120
    assert all(t["verdict"].startswith("n/a") for t in fps_targets.values())  # not the real conditions here
    assert any("prompt change" in t.get("target", "") for t in report["targets"])


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_psnr_and_availability_helpers():
    import torch

    bench = _bench_module()
    a = torch.zeros(1, 3, 4, 4)
    assert bench.psnr_db(a, a) == math.inf
    assert bench.psnr_db(a, a + 0.2) == pytest.approx(20.0)  # 0.1 off in [0, 1]: mse 0.01
    assert bench.accel_for("graphs", torch.device("cpu"))[0] == "compile"
    reason = bench.accel_for("fp8", torch.device("cpu"))
    assert isinstance(reason, str) and ("not available in this build" in reason or "FP8 needs" in reason)


def test_sigterm_stops_cleanly_and_keeps_what_was_measured(tmp_path):
    out = tmp_path / "gpu_bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--arch", "tiny", "--quick", "--size", "64",
         "--scenarios", "sd-turbo-1step", "--variants", "eager,diffusers", "--hitch-s", "60", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    seen = []
    try:
        for line in proc.stderr:  # the log: wait until the eager variant is being measured
            seen.append(line)
            if "sd-turbo-1step / eager ..." in line:
                break
        # its 90 s prompt-change phase has started or is about to: stop the run in the middle of it
        time.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        stdout, rest = proc.communicate(timeout=60)
        stderr = "".join(seen) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["stopped"] == "stopped early: SIGTERM"
    stopped = [r for r in report["results"] if r.get("stopped") or r.get("skipped", "").startswith("stopped")]
    assert stopped and stopped[0]["variant"] == "eager"
    if stopped[0].get("stopped"):  # stopped in its prompt-change phase: the fps measured before it stays
        assert stopped[0]["fps"] > 0 and "prompt_hitch" not in stopped[0]
    assert "stopped early: SIGTERM" in stdout and "JSON:" in stdout
