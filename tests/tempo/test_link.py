"""Ableton Link with a second Link peer on loopback: our clock follows the session's tempo and
phase and pushes our tempo to it. The peers run in a private network namespace holding only the
loopback interface (``unshare``), so Link's multicast discovery stays on this machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.tempo import LinkUnavailable, link_available

ROOT = Path(__file__).resolve().parents[2]


def _namespace_command() -> list[str] | None:
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    return [unshare, "--net"] if os.geteuid() == 0 else [unshare, "--net", "--map-root-user"]


@pytest.mark.timeout(90)
def test_link_follows_a_second_peer_on_loopback() -> None:
    if not link_available():
        pytest.skip('Ableton Link is an optional extra: pip install "streambridge[link]" (aalink)')
    prefix = _namespace_command()
    if prefix is None:
        pytest.skip("needs util-linux `unshare` to keep Link's multicast inside a loopback-only namespace")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private network namespace here ({probe.stderr.strip()}); Link's "
                    "discovery would leave the machine")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([*prefix, sys.executable, "-m", "tests.tempo.link_peers"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["joined_s"] is not None, got
    a, b = got["tempo_after_join"]
    assert a == pytest.approx(b, abs=1e-3)  # one session, one tempo
    assert got["follow_tempo_s"] is not None and got["our_tempo"] == pytest.approx(133.0, abs=1e-3)
    assert got["phase_error_beats"] < 0.02, got  # the same place in the bar as the peer
    assert got["push_tempo_s"] is not None and got["peer_tempo"] == pytest.approx(101.5, abs=1e-3)
    assert got["left_s"] is not None  # closing leaves the session


def test_a_missing_link_module_is_a_clear_error(monkeypatch) -> None:
    import builtins

    from bridge.tempo import LinkClock

    real_import = builtins.__import__

    def no_aalink(name, *args, **kwargs):
        if name == "aalink":
            raise ImportError("No module named 'aalink'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_aalink)
    with pytest.raises(LinkUnavailable, match=r'pip install "streambridge\[link\]"'):
        LinkClock(120.0, 4)
