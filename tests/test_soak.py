"""bench/soak.py stays runnable: a short chaos cycle against the real daemon (pattern source, so no
NDI sender is needed) must keep the output going and end with every check passing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_short_soak_cycle_passes_its_checks(tmp_path):
    report = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--seconds", "10", "--cycle", "10", "--settle", "1",
         "--source", "pattern", "--flood-pps", "5000", "--stall", "1.6", "--min-flood-ratio", "0.3",
         "--json", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(report.read_text())
    events = " ".join(text for _, text in data["events"])
    # every fault of the cycle happened (the source stays: pattern) ...
    assert "flood" in events and "sink 2 failing" in events and "render stalls" in events
    # ... the render watchdog saw the stall, and the output never stopped
    assert any(s["render"] == "stalled" for s in data["samples"])
    assert data["longest_gap_ms"] <= 3 * 50 + 50
    assert data["control_ms"] is not None and data["control_ms"] <= 100
    assert all(data["checks"].values())
