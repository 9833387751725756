"""Nothing accepted is lost on stop: a preset save sent just before SIGTERM (or a stop) is on disk,
and of a burst of saves each one is on disk or was refused with a logged error."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bridge.control.codec import encode_message
from bridge.daemon import Daemon, DaemonOptions
from tests.daemon.conftest import FeedbackListener, daemon_config, wait_until

REPO = Path(__file__).resolve().parents[2]


def test_save_then_sigterm_is_written(tmp_path, tiny_model_dir):
    presets = tmp_path / "presets"
    presets.mkdir()
    shutil.copy(REPO / "presets" / "neon-city.yaml", presets / "neon-city.yaml")
    shipped = (presets / "neon-city.yaml").read_text()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--source", "pattern:64x64@20", "--sink", "null",
         "--model", str(tiny_model_dir), "--device", "cpu", "--size", "64x64", "--osc", "127.0.0.1:0",
         "--presets", str(presets)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    port = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        seen += line
        m = re.search(r"OSC listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
        if "StreamBridge running" in line or p.poll() is not None:
            break
    assert port is not None and "StreamBridge running" in seen, seen[-2000:]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.sendto(encode_message("/sd/guidance", 2.5), ("127.0.0.1", port))
    sock.sendto(encode_message("/sd/preset/save", "just-before-stop"), ("127.0.0.1", port))
    sock.sendto(encode_message("/sd/preset/save", "neon-city"), ("127.0.0.1", port))  # exists: refused
    p.send_signal(signal.SIGTERM)  # at once: the saves are still in the inbox or the saver
    sock.close()
    _, err = p.communicate(timeout=60)
    seen += err
    assert p.returncode == 0, seen[-3000:]
    saved = presets / "just-before-stop.yaml"
    assert saved.exists(), seen[-3000:]
    assert yaml.safe_load(saved.read_text())["guidance"] == 2.5  # the state it was sent in
    assert (presets / "neon-city.yaml").read_text() == shipped
    assert "preset 'neon-city' already exists" in seen and "/sd/preset/save neon-city 1" in seen


def test_save_accepted_before_the_last_tick_is_written_on_stop(tmp_path, tiny_model_dir):
    """The stop comes before the render loop ticks again (it is busy, or it has just ended): the
    save waiting in the inbox must still be written before the stop completes."""
    presets = tmp_path / "presets"
    presets.mkdir()
    fb = FeedbackListener()
    d = Daemon(daemon_config(tiny_model_dir, presets, fb.port), DaemonOptions(prewarm_timeout=30))
    d.start()
    try:
        assert wait_until(lambda: d.frames_rendered > 2, 20)
        d.controller.tick = lambda now=None: None  # the render loop will not tick again
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.sendto(encode_message("/sd/seed", 4242), d.osc.address)
        sock.sendto(encode_message("/sd/preset/save", "last-look"), d.osc.address)
        assert wait_until(lambda: d.osc.stats()["accepted"] >= 2, 5)
        sock.close()
        d.stop()
    finally:
        if d.osc is not None and d.osc.running:
            d.stop()
        fb.close()
    saved = presets / "last-look.yaml"
    assert saved.exists()
    assert yaml.safe_load(saved.read_text())["seed"] == 4242  # the state the save was sent in


def test_burst_of_300_saves_then_stop_every_one_accounted_for(tmp_path, tiny_model_dir, caplog):
    presets = tmp_path / "presets"
    presets.mkdir()
    fb = FeedbackListener()
    d = Daemon(daemon_config(tiny_model_dir, presets, fb.port), DaemonOptions(prewarm_timeout=30))
    d.start()
    try:
        assert wait_until(lambda: d.frames_rendered > 2, 20)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        names = [f"burst{i:03d}" for i in range(300)]
        with caplog.at_level(logging.INFO):
            received0 = d.osc.stats()["received"]
            for name in names:
                sock.sendto(encode_message("/sd/preset/save", name), d.osc.address)
            # every datagram reached the receiver (or the kernel says how many it dropped)
            assert wait_until(lambda: d.osc.stats()["received"] - received0 + (d.osc.kernel_drops() or 0) >= 300, 10)
            drops = d.osc.kernel_drops() or 0
            d.stop()  # at once: saves are still queued, waiting or being written
    finally:
        if d.osc is not None and d.osc.running:
            d.stop()
        fb.close()
    on_disk = {p.stem for p in presets.glob("*.yaml")}
    inbox, saver = d.controller.inbox.stats(), d.controller.saver.stats()
    assert on_disk <= set(names)
    assert saver["written"] == len(on_disk) and saver["superseded"] == 0
    # every save is on disk or refused, and every refusal is in the log
    assert len(on_disk) + saver["refused"] + saver["failed"] + inbox["refused"] + drops == 300, (inbox, saver)
    msgs = [r.getMessage() for r in caplog.records]
    saver_refusals = [m for m in msgs if re.match(r"preset 'burst\d+' not saved", m)]
    assert len(saver_refusals) == saver["refused"] + saver["failed"]
    queue_full = sum(int(m.split(": ")[1].split()[0]) for m in msgs if m.startswith("control queue was full:"))
    assert queue_full == inbox["refused"]
    assert len(on_disk) >= 1
