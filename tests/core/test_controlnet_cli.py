"""`streambridge render --controlnet ...` and `streambridge models make-tiny --controlnet/--depth-model`."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bridge.cli import main
from tests.core.controlnet_fixtures import *  # noqa: F403

SIZE = 64


def write_frames(folder, count, size=(SIZE, SIZE), shift=0):
    folder.mkdir()
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for k in range(count):
        img = np.stack([(xx * 4 + (k + shift) * 40) % 256, (yy * 4) % 256, ((xx + yy) * 2 + k * 15) % 256],
                       -1).astype(np.uint8)
        cv2.imwrite(str(folder / f"f{k:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        frames.append(img)
    return frames


@pytest.fixture
def recorded(monkeypatch):
    """Every ``control`` argument the engine is given (copied), in call order."""
    from stream_core.engine import StreamEngine

    calls = []
    original = StreamEngine.process

    def process(self, frames, mix=None, control=None):
        calls.append((frames.copy(), None if control is None else [None if c is None else c.copy() for c in control],
                      self.pipeline.controlnet_scales, self.pipeline.controlnet_preprocessors))
        return original(self, frames, mix, control)

    monkeypatch.setattr(StreamEngine, "process", process)
    return calls


def test_render_with_controlnets_pairs_control_frames_with_input_frames(tmp_path, tiny_model_dir, tiny_controlnet_dir,
                                                                        tiny_controlnet_b_dir, recorded):
    frames = write_frames(tmp_path / "in", 4)
    controls = write_frames(tmp_path / "ctl", 3, size=(SIZE, SIZE), shift=3)  # one frame short: the last is held
    out = tmp_path / "out"
    rc = main(["render", str(tmp_path / "in"), str(out), "--model", str(tiny_model_dir), "--device", "cpu",
               "--size", f"{SIZE}x{SIZE}", "--steps", "32,45", "--acceleration", "none",
               "--controlnet", str(tiny_controlnet_dir), "--controlnet-scale", "0.5",
               "--controlnet-preprocessor", "none",
               "--controlnet", str(tiny_controlnet_b_dir), "--controlnet-scale", "1.5",
               "--controlnet-preprocessor", "canny",
               "--control-input", str(tmp_path / "ctl"), "--control-input", "input"])
    assert rc == 0
    assert len(sorted(out.glob("*.png"))) == 4
    # 4 frames + 1 drain call (latency 1)
    assert len(recorded) == 5
    for k, (frame, control, scales, pres) in enumerate(recorded):
        src = min(k, 3)
        assert np.array_equal(frame[0], frames[src])
        assert scales == (0.5, 1.5) and pres == ("none", "canny")
        assert np.array_equal(control[0][0], controls[min(k, 2)])
        edges = cv2.Canny(cv2.cvtColor(frames[src], cv2.COLOR_RGB2GRAY), 100, 200)
        assert np.array_equal(control[1][0], np.repeat(edges[..., None], 3, axis=-1))


def test_render_controlnet_argument_errors(tmp_path, tiny_model_dir, tiny_controlnet_dir, caplog):
    write_frames(tmp_path / "in", 1)
    base = ["render", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tiny_model_dir), "--device", "cpu",
            "--size", f"{SIZE}x{SIZE}", "--acceleration", "none"]
    cases = [
        (["--controlnet", "a/b", "--controlnet", "c/d", "--controlnet-scale", "1"], "--controlnet-scale is given 1"),
        (["--control-input", str(tmp_path / "in")], "needs a --controlnet"),
        (["--controlnet", str(tiny_controlnet_dir), "--controlnet-preprocessor", "depth"], "needs --depth-model"),
        (["--controlnet", str(tiny_controlnet_dir), "--controlnet-scale", "-1"], "scale should be a finite number"),
        (["--controlnet", str(tmp_path / "missing-cn")], "missing-cn"),
        (["--controlnet", str(tiny_controlnet_dir), "--control-input", str(tmp_path / "nope")], "no such file"),
    ]
    for extra, message in cases:
        caplog.clear()
        assert main(base + extra) != 0
        assert message in caplog.text, (extra, caplog.text)


def test_make_tiny_writes_a_matching_controlnet_and_a_depth_model(tmp_path):
    from stream_core.controlnet import ControlNetSpec
    from stream_core.models import ModelSpec, load_components

    model, cn, depth = tmp_path / "m", tmp_path / "cn", tmp_path / "depth"
    assert main(["models", "make-tiny", str(model), "--controlnet", str(cn), "--depth-model", str(depth)]) == 0
    comps = load_components(ModelSpec(model=str(model), device="cpu", dtype="float32"),
                            controlnets=[ControlNetSpec(str(cn), 1.0, "depth", depth_model=str(depth))])
    lc = comps.controlnets[0]
    assert type(lc.model).__name__ == "ControlNetModel"
    assert tuple(lc.model.config.block_out_channels) == tuple(comps.unet.config.block_out_channels)
    assert type(lc.depth.model).__name__ == "DPTForDepthEstimation" and lc.depth.size == (32, 32)
    # the zero convolutions are random: the ControlNet really adds something
    assert float(lc.model.controlnet_mid_block.weight.abs().sum()) > 0


def test_render_with_a_video_as_control_input_and_the_depth_preprocessor(tmp_path, tiny_model_dir,
                                                                        tiny_controlnet_dir, tiny_depth_dir, recorded):
    write_frames(tmp_path / "in", 2)
    video = tmp_path / "depth.avi"
    wr = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 80))
    shots = []
    for k in range(3):
        img = np.zeros((80, 96, 3), np.uint8)
        img[:, : 20 + 30 * k] = 200  # a bar that grows frame by frame
        wr.write(img)
        shots.append(img)
    wr.release()
    out = tmp_path / "out"
    rc = main(["render", str(tmp_path / "in"), str(out), "--model", str(tiny_model_dir), "--device", "cpu",
               "--size", f"{SIZE}x{SIZE}", "--steps", "32,45", "--acceleration", "none", "--resize", "stretch",
               "--controlnet", str(tiny_controlnet_dir), "--controlnet-preprocessor", "depth",
               "--depth-model", str(tiny_depth_dir), "--control-input", str(video)])
    assert rc == 0 and len(sorted(out.glob("*.png"))) == 2
    assert [r[2:] for r in recorded] == [((1.0,), ("depth",))] * 3
    for k, (_, control, _, _) in enumerate(recorded[:2]):
        expected = cv2.resize(cv2.cvtColor(shots[k], cv2.COLOR_BGR2RGB), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        assert np.abs(control[0][0].astype(int) - expected.astype(int)).mean() < 12  # MJPG is lossy
    assert not np.array_equal(recorded[0][1][0], recorded[1][1][0])
