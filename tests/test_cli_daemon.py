"""The daemon as a user runs it: `streambridge demo`, `run` + SIGTERM, fatal start-up errors,
`validate` and `sources`, each in a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]


def streambridge(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "bridge", *args], cwd=kw.pop("cwd", REPO), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def frames_in(video: Path) -> int:
    cap = cv2.VideoCapture(str(video))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_demo_runs_and_writes_video(tmp_path, tiny_model_dir):
    video = tmp_path / "demo.mp4"
    p = streambridge("demo", "--duration", "4", "--model-dir", str(tiny_model_dir), "--video", str(video),
                     "--osc", "127.0.0.1:0", "--size", "64x64", "--status", "127.0.0.1:0")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    assert "StreamBridge running" in err and "ndi" in err.lower()
    assert "status page on http://127.0.0.1:" in err
    assert frames_in(video) >= 30  # 15 fps for ~4 s, steady even while the model warms up
    assert "Traceback" not in err


def test_run_stops_cleanly_on_sigterm(tmp_path, tiny_model_dir):
    video = tmp_path / "out.mp4"
    p = streambridge("run", "--source", "pattern:96x64@20", "--sink", f"video:{video}", "--sink", "null",
                     "--model", str(tiny_model_dir), "--device", "cpu", "--size", "64x64",
                     "--osc", "127.0.0.1:0", "--presets", str(REPO / "presets"))
    deadline = time.monotonic() + 90
    seen = ""
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        seen += line
        if "StreamBridge running" in line or p.poll() is not None:
            break
    assert "StreamBridge running" in seen, seen[-2000:]
    time.sleep(2.0)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    seen += err
    assert p.returncode == 0, seen[-2000:]
    assert "stopped by SIGTERM" in seen and "render errors" in seen
    assert frames_in(video) >= 10  # the writer was closed properly: the file is readable


def test_fatal_startup_error_is_one_message(tmp_path):
    p = streambridge("run", "--model", str(tmp_path / "no-model-here"), "--device", "cpu", "--osc", "127.0.0.1:0",
                     "--presets", str(REPO / "presets"))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1
    assert "no-model-here" in err and "Traceback" not in err


def test_validate_reports_file_line_key_value(tmp_path, tiny_model_dir):
    bad = tmp_path / "show.yaml"
    bad.write_text("pipeline:\n  size: 500x512\n  cfg: sometimes\nosc:\n  listen: 127.0.0.1:9400\n  feedbak: []\n")
    p = streambridge("validate", str(bad))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert f"{bad}:2: key 'pipeline.size'" in err and "500x512" in err
    assert f"{bad}:3: key 'pipeline.cfg'" in err and "sometimes" in err
    assert f"{bad}:6: key 'osc.feedbak': unknown key" in err
    good = tmp_path / "good.yaml"
    # the example names sd-turbo, which this machine does not have: point it at the tiny model
    good.write_text((REPO / "examples" / "ndi-network.yaml").read_text() + f"model:\n  model: '{tiny_model_dir}'\n")
    p = streambridge("validate", str(good))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err


def test_validate_checks_meaning_and_lists_every_problem(tmp_path, tiny_model_dir):
    show = tmp_path / "show.yaml"
    show.write_text(
        "model:\n"
        "  model: someone/not-on-this-machine\n"  # 2
        "  device: cuda\n"  # 3: this torch has no CUDA
        "source:\n"
        "  type: spout\n"  # 5: Windows only
        "  name: TD\n"
        "sinks:\n"
        "  - type: syphon\n"  # 8: macOS only
        "presets:\n"
        f"  folder: {tmp_path / 'no-presets'}\n"  # 10
    )
    p = streambridge("validate", str(show))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert f"{show}:2: key 'model.model'" in err and "streambridge models fetch someone/not-on-this-machine" in err
    assert f"{show}:3: key 'model.device'" in err and "CUDA" in err
    assert f"{show}:5: key 'source.type'" in err and "Windows" in err
    assert f"{show}:8: key 'sinks.0.type'" in err and "macOS" in err
    assert f"{show}:10: key 'presets.folder'" in err
    ports = tmp_path / "ports.yaml"
    ports.write_text("osc:\n  listen: 127.0.0.1:99999\n  feedback: [localhost]\nstatus:\n  listen: 127.0.0.1:70000\n")
    p = streambridge("validate", str(ports))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert f"{ports}:2: key 'osc.listen'" in err and "99999" in err
    assert f"{ports}:3: key 'osc.feedback'" in err and "no port" in err
    assert f"{ports}:5: key 'status.listen'" in err and "70000" in err


def test_sources_lists_backends():
    p = streambridge("sources", "--timeout", "0.5")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0
    assert "ndi" in out and "spout: unavailable" in out and "syphon: unavailable" in out


def test_missing_model_fails_fast_without_the_network(tmp_path):
    """No offline variable, an empty cache, a hub endpoint that records every connection: `run`
    fails within 5 s with one message saying how to get the model, and never connects."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    connections: list[object] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            connections.append(conn)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{server.getsockname()[1]}",
               PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "bridge", "run", "--model", "someone/not-on-this-machine",
                        "--osc", "127.0.0.1:0", "--presets", str(REPO / "presets")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    done.set()
    assert p.returncode == 1, p.stderr[-2000:]
    assert "streambridge models fetch someone/not-on-this-machine" in p.stderr
    assert p.stderr.count("not on this machine") == 1 and "Traceback" not in p.stderr
    assert not connections
    assert elapsed < 5.0, f"took {elapsed:.1f} s"
