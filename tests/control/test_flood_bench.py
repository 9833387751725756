"""bench/flood.py and the gpu-check step that runs it must not rot between GPU sessions.

The bench runs here end to end in its shortest form (the tiny model on the CPU, real UDP, the
flooder processes), pinned to one CPU, and its JSON report is checked for every figure; its
helpers (CPU accounting from /proc, CPU lists, pinning, a missing thread) are checked directly;
the gpu-check step is checked for the command lines it runs, with a stand-in for Python.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CPU = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0  # one this runner may use
linux_only = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not Path("/proc/self/task").is_dir(),
                                reason="needs Linux /proc and sched_setaffinity")


def _load_flood():
    spec = importlib.util.spec_from_file_location("flood_bench", ROOT / "bench" / "flood.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def flood():
    return _load_flood()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("flood") / "flood.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "flood.py"), "--seconds", "0.6", "--quiet", "0.5", "--rounds", "1",
         "--pulse", "0.25", "--warmup", "0.3", "--cpus", str(CPU), "--receiver", "process", "--json", str(out)],
        capture_output=True, text=True, timeout=180, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "goals: " in proc.stdout and f"JSON: {out}" in proc.stdout
    return json.loads(out.read_text())


@linux_only
def test_report_has_every_figure_with_sane_values(report):
    assert report["run"]["arch"] == "tiny" and report["run"]["device"] == "cpu"
    assert report["run"]["size"] == 64 and report["run"]["dtype"] == "float32"
    assert report["args"]["source_fps"] == 90.0 and report["args"]["receiver"] == "process"
    assert report["host"]["torch_threads"] == 1  # kept on the CPU device
    assert report["run"]["frames_rendered"] > 0 and report["run"]["render_errors"] == 0
    for name, phase in report["phases"].items():
        assert phase["fps"] > 0, name
        cpu = phase["cpu_s_per_s"]
        assert set(cpu) == {"osc-receive", "render", "feedback", "osc-process"}  # the receiver's own process
        assert cpu["render"] is not None and cpu["render"] > 0 and cpu["osc-process"] is not None
    assert report["baselines"]["steady"] > 0 and report["baselines"]["flood"] > 0
    for load in ("steady", "flood"):
        r = report[load]
        assert r["sent"] > 0 and 0 < r["received"] <= r["sent"] + 20  # + the few reset messages
        assert r["fps"] > 0 and math.isfinite(r["ratio"]) and r["ratio"] > 0
        assert r["ratio"] == pytest.approx(r["fps"] / report["baselines"][load], rel=1e-3)
    assert report["flood"]["kernel_drops"] >= 0
    for key in ("steady", "flood", "steady_daemon_share", "control_burn"):
        assert math.isfinite(report["paired"][key]) and report["paired"][key] > 0, key
    lw = report["last_value_wins"]
    assert lw["measured"] and lw["ok"] and lw["applied"] == pytest.approx(lw["last_valid_sent"])
    assert 0 <= report["after_flood"]["applied_ms"] < 5000 and isinstance(report["after_flood"]["ok"], bool)
    assert set(report["goals"]) == {"steady", "flood", "steady (paired)", "steady (daemon's share)",
                                    "flood (paired)", "last value wins", "after flood"}
    assert report["missed"] == [name for name, ok in report["goals"].items() if not ok]


@linux_only
def test_cpus_pins_the_bench_and_every_flooder(report):
    host = report["host"]
    assert host["affinity"] == [CPU]
    assert host["affinity_threads"] == [[CPU]]  # every thread of the daemon, render loop included
    assert report["run"]["receiver_pid"] > 0 and host["affinity_receiver_process"] == [CPU]
    assert len(host["affinity_flooders"]) == 6 and all(a == [CPU] for a in host["affinity_flooders"])
    assert report["args"]["cpus"] == [CPU]


def test_cpu_lists_parse_and_bad_ones_are_refused(flood):
    assert flood.parse_cpus("0,1") == [0, 1]
    assert flood.parse_cpus("2-4,0") == [0, 2, 3, 4]
    import argparse

    for bad in ("", "a", "3-1", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            flood.parse_cpus(bad)


@linux_only
def test_process_and_thread_cpu_are_read_and_a_missing_thread_is_na(flood):
    stop = time.perf_counter() + 0.3
    while time.perf_counter() < stop:
        pass
    assert flood._process_cpu(os.getpid()) > 0.2
    assert flood._process_cpu(None) is None and flood._process_cpu(2**22 + 12345) is None
    assert flood._thread_cpu(threading.main_thread().native_id) > 0
    assert flood._thread_cpu(None) is None

    class FakeDaemon:
        frames_rendered = 0

    ph = flood.Phase(FakeDaemon(), {"render": lambda: flood._thread_cpu(threading.main_thread().native_id),
                                    "osc-receive": lambda: flood._thread_cpu(None),
                                    "osc-process": lambda: flood._process_cpu(os.getpid())})
    with ph:
        FakeDaemon.frames_rendered = 5
    assert "osc-receive n/a" in ph.cpu_text() and "osc-process " in ph.cpu_text()
    d = ph.as_dict()
    assert d["cpu_s_per_s"]["osc-receive"] is None and d["fps"] > 0


@linux_only
def test_pin_process_pins_threads_that_already_run(flood):
    before = os.sched_getaffinity(0)
    if len(before) < 2:
        pytest.skip("needs 2 CPUs")
    cpu = min(before)
    ready, done = threading.Event(), threading.Event()
    t = threading.Thread(target=lambda: (ready.set(), done.wait(10)), daemon=True)
    t.start()
    ready.wait(5)
    try:
        assert flood.pin_process(0, [cpu]) == []
        assert os.sched_getaffinity(t.native_id) == {cpu}
        assert flood.thread_affinities() == [[cpu]]
    finally:
        done.set()
        t.join(5)
        flood.pin_process(0, sorted(before))
    assert os.sched_getaffinity(0) == before


FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for Python: records the command line, writes what --json names
printf '%s\\n' "$*" >> "$OUT/calls.txt"
prev=""
for a in "$@"; do
  if [ "$prev" = "--json" ]; then echo '{}' > "$a"; fi
  prev=$a
done
exit 0
"""


def _gpu_check(tmp_path: Path, **env: str) -> tuple[str, list[str]]:
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    full = {**os.environ, "OUT": str(out), "PYTHON": str(fake), "GPU_CHECK_STEPS": "flood", **env}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh")], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    calls = [c for c in (out / "calls.txt").read_text().splitlines() if "bench/flood.py" in c]
    return proc.stdout, calls


@pytest.mark.skipif(shutil.which("timeout") is None or shutil.which("bash") is None, reason="needs bash and timeout")
def test_gpu_check_flood_step_command_lines(tmp_path):
    # on CUDA: sd-turbo with torch.compile, pinned to 2 CPUs, the extra arguments last
    log, calls = _gpu_check(tmp_path / "cuda", GPU_CHECK_FLOOD_ARGS="--strict --flood-rate 5000")
    out = tmp_path / "cuda" / "out"
    assert len(calls) == 1, calls
    assert ("bench/flood.py --device cuda --arch sd-turbo --acceleration compile --cpus 0,1 --seconds 4 --quiet 3 "
            f"--rounds 6 --json {out}/flood.json --strict --flood-rate 5000") in calls[0]
    assert "=== flood (limit 150 s)" in log and (out / "flood.log").is_file() and (out / "flood.json").is_file()
    # quick on the CPU: the tiny model, short phases; one run per receiver with its own log and JSON
    log, calls = _gpu_check(tmp_path / "cpu", GPU_CHECK_DEVICE="cpu", GPU_CHECK_QUICK="1", GPU_CHECK_FLOOD_S="77",
                            GPU_CHECK_FLOOD_RECEIVERS="thread process")
    out = tmp_path / "cpu" / "out"
    assert len(calls) == 2, calls
    for call, receiver in zip(calls, ("thread", "process"), strict=True):
        assert call.startswith("bench/flood.py --device cpu --arch tiny --seconds 1 --quiet 1 --rounds 2")
        assert f"--receiver {receiver} --json {out}/flood-{receiver}.json" in call
        assert f"=== flood-{receiver} (limit 77 s)" in log
        assert (out / f"flood-{receiver}.log").is_file() and (out / f"flood-{receiver}.json").is_file()
    assert "--cpus" not in calls[0]
    # not asked for: no flood step
    _, calls = _gpu_check(tmp_path / "none", GPU_CHECK_STEPS="doctor", GPU_CHECK_DEVICE="cpu", GPU_CHECK_QUICK="1")
    assert calls == []


def test_config_of_the_run_per_architecture_and_device(flood, tmp_path):
    from bridge.config import DaemonConfig

    parse = flood.build_parser().parse_args
    tiny = flood.config_data(parse([]), "some/model", tmp_path)  # the defaults: the CPU run as before
    assert tiny["model"] == {"model": "some/model", "device": "cpu", "dtype": "float32"}
    assert tiny["pipeline"] == {"size": [64, 64], "steps": [32, 45], "cfg": "self"}
    assert tiny["source"]["fps"] == 90.0 and "receiver" not in tiny["osc"]
    gpu = flood.config_data(parse(["--device", "cuda", "--arch", "sd-turbo", "--acceleration", "compile"]),
                            "random:sd-turbo", tmp_path)
    cfg = DaemonConfig.model_validate(gpu)  # what the daemon gets on the GPU machine is a valid config
    assert cfg.model.device == "cuda" and cfg.model.dtype == "float16" and cfg.model.lcm_lora == "none"
    assert list(cfg.pipeline.size) == [512, 512] and cfg.pipeline.acceleration == "compile"
    assert cfg.source.fps == 240.0 and cfg.source.width == 512
    own = flood.config_data(parse(["--device", "cuda:0", "--arch", "sd15", "--size", "256", "--dtype", "bfloat16",
                                   "--source-fps", "120", "--receiver", "process"]), "random:sd15", tmp_path)
    assert own["model"]["dtype"] == "bfloat16" and own["pipeline"]["size"] == [256, 256]
    assert own["source"]["fps"] == 120.0 and own["osc"]["receiver"] == "process"
    assert "acceleration" not in own["pipeline"]  # not given: the config's default


@linux_only
def test_cpus_this_process_may_not_use_are_refused_before_anything_is_built():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "flood.py"), "--cpus", "4095"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "--cpus 4095: this process may only run on CPUs" in proc.stderr
