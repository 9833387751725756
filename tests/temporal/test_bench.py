"""The GPU benchmark's temporal mode runs end to end (tiny model on the CPU) and keeps to its budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_temporal_mode_smoke_and_budget(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu
    finally:
        sys.path.remove(str(ROOT / "bench"))
    out = tmp_path / "t.json"
    rc = gpu.main(["--temporal", "--device", "cpu", "--arch", "tiny", "--quick", "--size", "64",
                   "--budget-s", "12", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [r["variant"] for r in rows[: len(gpu.TEMPORAL_VARIANTS)]] == list(gpu.TEMPORAL_VARIANTS)
    measured = [r for r in rows if "ms_per_frame" in r]
    assert measured and measured[0]["variant"] == "off"
    assert all(r["finite"] for r in measured)
    assert all("bank_mib" in r for r in measured if r["variant"].startswith(("cache", "bank")))
    # the CUDA-graph variants are skipped on the CPU with their reason
    graphs = [r for r in rows if r["variant"].startswith("graphs")]
    assert graphs and all(r.get("skipped") == "CUDA graphs need a CUDA GPU" for r in graphs)
    assert any(r.get("skipped") == "time budget" for r in rows) or len(measured) == len(rows) - len(graphs)
    assert "x off" in capsys.readouterr().out
