"""First run: `streambridge demo` echoes every change to a local feedback port it names at start."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge import cmd_run
from bridge.cli import build_parser
from bridge.control.codec import OscBundle, OscMessage, decode_packet, encode_message

REPO = Path(__file__).resolve().parents[1]


def _demo_config(monkeypatch, tiny_model_dir, *extra: str):
    seen = {}
    monkeypatch.setattr(cmd_run, "run_daemon", lambda cfg, duration: seen.setdefault("cfg", cfg) and 0)
    args = build_parser().parse_args(["demo", "--model-dir", str(tiny_model_dir), "--no-ndi", "--video", "",
                                      "--status", "", *extra])
    assert args.func(args) == 0
    return seen["cfg"]


def test_demo_sends_feedback_to_a_local_port_by_default_and_says_where(monkeypatch, tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="streambridge"):
        cfg = _demo_config(monkeypatch, tiny_model_dir)
    assert cfg.osc.feedback == ["127.0.0.1:9401"] == [cmd_run.DEMO_FEEDBACK]
    assert "every change is echoed to 127.0.0.1:9401" in caplog.text and "osc_watch.py 9401" in caplog.text
    # given targets replace the default (argparse would otherwise append to it); '' turns it off
    assert _demo_config(monkeypatch, tiny_model_dir, "--feedback", "127.0.0.1:9555").osc.feedback == \
        ["127.0.0.1:9555"]
    assert _demo_config(monkeypatch, tiny_model_dir, "--feedback", "").osc.feedback == []


def _messages(packet):
    if isinstance(packet, OscMessage):
        yield packet
    elif isinstance(packet, OscBundle):
        for item in packet.elements:
            yield from _messages(item)


def test_a_change_sent_to_the_demo_is_echoed_to_its_feedback_port(tiny_model_dir):
    """Real UDP, the real command. On the default port when it is free, else on a given one."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    args = ["demo", "--duration", "60", "--model-dir", str(tiny_model_dir), "--no-ndi", "--video", "",
            "--status", "", "--size", "64x64", "--osc", "127.0.0.1:0"]
    try:
        rx.bind(("127.0.0.1", 9401))  # the default target
    except OSError:
        rx.bind(("127.0.0.1", 0))
        args += ["--feedback", f"127.0.0.1:{rx.getsockname()[1]}"]
    port = rx.getsockname()[1]
    rx.settimeout(0.2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "bridge", *args], cwd=REPO, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        osc_port = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and p.poll() is None:
            line = p.stderr.readline()
            seen += line
            m = re.search(r"OSC listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                osc_port = int(m.group(1))
            if "StreamBridge running" in line:
                break
        assert osc_port is not None and "StreamBridge running" in seen, seen[-2000:]
        assert f"every change is echoed to 127.0.0.1:{port}" in seen
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(encode_message("/sd/strength", 0.42), ("127.0.0.1", osc_port))
        echoed = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                data = rx.recv(65536)
            except TimeoutError:
                continue
            echoed += [(m.address, m.args) for m in _messages(decode_packet(data))]
            if any(a == "/sd/strength" for a, _ in echoed):
                break
        values = [v for a, v in echoed if a == "/sd/strength"]
        assert values and values[0][0] == pytest.approx(0.42), echoed[-20:]
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
        rx.close()
    assert p.returncode == 0
