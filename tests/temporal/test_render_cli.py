"""`streambridge render` with latent feedback and the cached-attention bank (offline clips are where
flicker settings get judged)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bridge.cli import main

SIZE = 64


def _folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for k in range(5):
        img = np.stack([(xx * 4 + k * 6) % 256, (yy * 3 + k * 4) % 256, ((xx + yy) * 2) % 256], -1).astype(np.uint8)
        cv2.imwrite(str(src / f"{k:03d}.png"), img)
    return src


def _outputs(folder):
    return [cv2.imread(str(p)) for p in sorted(folder.glob("*.png"))]


def test_render_with_bank_injection_and_feedback(tmp_path, tiny_model_dir):
    src = _folder(tmp_path)
    base = ["--model", str(tiny_model_dir), "--device", "cpu", "--size", f"{SIZE}x{SIZE}", "--steps", "32,45"]
    assert main(["render", str(src), str(tmp_path / "plain"), *base]) == 0
    assert main(["render", str(src), str(tmp_path / "t"), *base, "--temporal-frames", "2",
                 "--temporal-injection", "0.5", "--latent-feedback", "0.3"]) == 0
    plain, temporal = _outputs(tmp_path / "plain"), _outputs(tmp_path / "t")
    assert len(plain) == len(temporal) == 5
    assert np.array_equal(plain[0], temporal[0])  # the first frame: nothing cached, nothing fed back
    assert any(not np.array_equal(a, b) for a, b in zip(plain, temporal, strict=True))


@pytest.mark.parametrize("extra,message", [
    (["--temporal-frames", "5"], "max_frames should be an integer in 0..4"),
    (["--temporal-injection", "0.5"], "needs --temporal-frames"),
    (["--latent-feedback", "0.95"], "latent_feedback should be a number in [0, 0.9]"),
])
def test_render_refuses_bad_temporal_arguments(tmp_path, tiny_model_dir, caplog, extra, message):
    src = _folder(tmp_path)
    assert main(["render", str(src), str(tmp_path / "o"), "--model", str(tiny_model_dir), "--device", "cpu",
                 *extra]) != 0
    assert message in caplog.text
