"""scripts/gpu-check.sh and the wheel-set check, on the CPU.

A GPU machine is lent for minutes at a time: the script that uses them must not break there. Its CPU
mode runs the same steps (wheel check, machine, tests, self-test, benchmark) tiny and fast; here one
step is made to fail on purpose, and the later steps must still run, the logs and JSON land in
$OUT, and the exit code says it failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import check_wheels  # noqa: E402


@pytest.mark.skipif(shutil.which("timeout") is None or shutil.which("bash") is None, reason="needs bash and timeout")
def test_gpu_check_cpu_mode_runs_every_step_and_reports_a_failed_one(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_QUICK": "1",
           "OMP_NUM_THREADS": "1", "GPU_CHECK_SECONDS": "2", "GPU_CHECK_VARIANTS": "eager",
           # a test target that does not exist: the tests step fails, the later steps must still run
           "GPU_CHECK_TESTS": "tests/accel/test_gpu.py::no_such_test",
           "GPU_CHECK_BENCH_ARGS": "--scenarios sd-turbo-1step --no-ratios --startup-variant none --hitch-s 0"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=400)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-4000:]
    assert "=== gpu-check FAILED: tests (rc 4)" in log, log[-4000:]
    for name in ("machine", "tests", "doctor", "bench"):
        assert (out / f"{name}.log").is_file(), name
        assert f"=== {name}: rc" in log
    assert "torch" in (out / "machine.log").read_text()
    doctor = json.loads((out / "doctor.json").read_text())
    assert doctor["passed"], doctor["failures"]
    bench = json.loads((out / "gpu_bench.json").read_text())
    assert [r["variant"] for r in bench["results"]] == ["eager"] and bench["results"][0]["fps"] > 0
    assert "PASS" in (out / "doctor.log").read_text()


def _wheel(folder: Path, name: str, version: str, requires: list[str], tag: str = "py3-none-any") -> None:
    dist = f"{name.replace('-', '_')}-{version}"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(folder / f"{dist}-{tag}.whl", "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", meta)


def test_wheel_set_check_accepts_a_consistent_set_and_names_each_problem(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    _wheel(good, "pydantic", "2.14.4", ["pydantic-core==2.50.5", "typing-extensions>=4.14.1",
                                        'email-validator>=2.0.0; extra == "email"'])
    _wheel(good, "pydantic-core", "2.50.5", ["typing-extensions>=4.14.1"], tag="cp312-cp312-manylinux_2_17_x86_64")
    _wheel(good, "typing-extensions", "4.16.0", [])
    _wheel(good, "diffusers", "0.42.1", ["numpy", 'pywin32; sys_platform == "win32"'])
    assert check_wheels.check(good, {"numpy"}) == []

    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    (bad / "pydantic_core-2.50.5-cp312-cp312-manylinux_2_17_x86_64.whl").unlink()
    _wheel(bad, "pydantic-core", "2.41.0", ["typing-extensions>=4.14.1"], tag="cp311-cp311-manylinux_2_17_x86_64")
    _wheel(bad, "typing-extensions", "4.15.0", [])
    problems = check_wheels.check(bad, set())
    text = "\n".join(problems)
    assert "pydantic needs pydantic-core==2.50.5, but the set has pydantic-core 2.41.0" in text
    assert "does not install on CPython 3.12" in text
    assert "typing-extensions: two wheels" in text
    assert "diffusers needs numpy: neither in the set nor on the GPU image" in text
