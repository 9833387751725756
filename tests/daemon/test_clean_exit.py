"""Every way a real `streambridge run` stops exits 0, whatever its NDI backend is doing: a sender
that does not exist (the worker is inside NDI discovery), SIGTERM / SIGINT mid-discovery, and a
sink that fails on every frame. Each case is a real subprocess with the real NDI runtime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("NDIlib", reason="needs the ndi extra (pip install -e '.[ndi]')")

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def run_args(model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bridge", "run", "--model", str(model), "--device", "cpu", "--size", "64x64",
            "--osc", "127.0.0.1:0", "--presets", str(REPO / "presets"), *extra]


def run_for(model: Path, duration: float, *extra: str) -> tuple[int, str]:
    p = subprocess.run(run_args(model, "--duration", str(duration), *extra), cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=180)
    return p.returncode, p.stderr


def stop_with(model: Path, sig: signal.Signals, after: float, *extra: str) -> tuple[int, str]:
    p = subprocess.Popen(run_args(model, *extra), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        seen += line
        if "StreamBridge running" in line or (not line and p.poll() is not None):
            break
    time.sleep(after)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    return p.returncode, seen + err


def test_ten_stops_in_a_row_with_a_missing_ndi_sender(tiny_model_dir):
    # stops land at different moments of NDI discovery (each look lasts 5 s, then it retries)
    durations = [0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.0, 2.2, 2.6, 3.0]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda d: run_for(tiny_model_dir, d, "--source", "ndi:NoSuchSender"),
                                durations))
    for d, (rc, err) in zip(durations, results, strict=True):
        assert rc == 0, f"--duration {d}: exit {rc}\n{err[-1500:]}"
        assert "terminate called" not in err and "Traceback" not in err, err[-1500:]
        assert "stopped:" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_ndi_discovery_exits_0(tiny_model_dir, sig):
    rc, err = stop_with(tiny_model_dir, sig, 0.7, "--source", "ndi:NoSuchSender")
    assert rc == 0, err[-1500:]
    assert f"stopped by {sig.name}" in err and "terminate called" not in err


def test_failing_sink_and_missing_sender_exit_0(tiny_model_dir, tmp_path):
    # a video sink under a regular file (no folder can be made there) fails on every open; an NDI
    # sink beside it works
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bad = blocker / "out.mp4"
    rc, err = stop_with(tiny_model_dir, signal.SIGTERM, 1.5, "--source", "ndi:NoSuchSender",
                        "--sink", f"video:{bad}", "--sink", "ndi:streambridge-exit-test")
    assert rc == 0, err[-1500:]
    assert "terminate called" not in err


SENDER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import NDIlib as lib
    assert lib.initialize()
    settings = lib.SendCreate()
    settings.ndi_name = sys.argv[1]
    settings.clock_video = False
    send = lib.send_create(settings)
    frame = lib.VideoFrameV2()
    frame.FourCC = lib.FOURCC_VIDEO_TYPE_BGRX
    frame.frame_rate_N, frame.frame_rate_D = 30000, 1000
    img = np.full((64, 96, 4), 128, np.uint8)
    while True:  # until killed: the sender vanishes without a goodbye
        frame.data = img
        lib.send_send_video_v2(send, frame)
        time.sleep(1 / 30)
""")


def test_stop_after_the_sender_vanished_exits_0(tiny_model_dir, tmp_path):
    cfg_dir = tmp_path / "ndi"
    cfg_dir.mkdir()
    (cfg_dir / "ndi-config.v1.json").write_text(json.dumps({"ndi": {"networks": {"ips": "127.0.0.1"}}}))
    env = {**ENV, "NDI_CONFIG_DIR": str(cfg_dir)}
    name = f"exit-test-{uuid.uuid4().hex[:8]}"
    (tmp_path / "sender.py").write_text(SENDER)
    daemon = subprocess.Popen(run_args(tiny_model_dir, "--source", f"ndi:{name}"), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(daemon.stderr.readline, "")), daemon=True)
    reader.start()
    sender = subprocess.Popen([sys.executable, str(tmp_path / "sender.py"), name], env=env)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not any("live (first frame" in ln for ln in lines):
            assert daemon.poll() is None, "".join(lines)[-2000:]
            time.sleep(0.2)
        assert any("NDI source connected" in ln for ln in lines), "".join(lines)[-2000:]
        sender.kill()  # the sender vanishes mid-stream
        sender.wait(10)
        time.sleep(1.5)  # the source is lost, the worker back in discovery
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        reader.join(10)
    finally:
        for p in (sender, daemon):
            if p.poll() is None:
                p.kill()
    err = "".join(lines)
    assert daemon.returncode == 0, err[-2000:]
    assert "terminate called" not in err and "stopped by SIGTERM" in err


STUCK = textwrap.dedent("""
    import sys, threading, time
    from bridge.io.ndi import load_ndi
    lib = load_ndi()
    settings = lib.FindCreate()
    settings.extra_ips = "127.0.0.1"
    finder = lib.find_create_v2(settings)
    # a thread that keeps entering native NDI waits, as a worker stuck in a backend would
    threading.Thread(target=lambda: [lib.find_wait_for_sources(finder, 300) for _ in range(100)],
                     daemon=True).start()
    time.sleep(0.5)

    class SlowTeardown:  # a module torn down slowly, as torch's is: the wait returns meanwhile
        def __del__(self):
            time.sleep(1.0)

    sys.modules["slow_teardown"] = type(sys)("slow_teardown")
    sys.modules["slow_teardown"].x = SlowTeardown()
    if sys.argv[1] == "fallback":
        from bridge.cmd_run import exit_process_if_stuck
        exit_process_if_stuck(0, ["ndi-wait"])
""")


def test_thread_left_in_native_ndi_call_aborts_a_plain_exit_and_not_the_fallback(tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(STUCK)
    plain = subprocess.run([sys.executable, str(script), "plain"], env=ENV, capture_output=True, text=True,
                           timeout=60)
    # the cause, shown: the thread returns from the native wait while the interpreter finalises
    assert plain.returncode == -signal.SIGABRT and "terminate called" in plain.stderr, plain.stderr
    fallback = subprocess.run([sys.executable, str(script), "fallback"], env=ENV, capture_output=True,
                              text=True, timeout=60)
    assert fallback.returncode == 0, fallback.stderr
    assert "ndi-wait still inside a backend call" in fallback.stderr
