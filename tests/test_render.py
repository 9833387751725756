"""`streambridge render` end to end: folder and video inputs, frame-accurate latency compensation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bridge.cli import main

SIZE = 64


def write_frames(folder, count):
    folder.mkdir()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    frames = []
    for k in range(count):
        img = np.stack([(xx * 4 + k * 40) % 256, (yy * 4) % 256, ((xx + yy) * 2 + k * 15) % 256], -1).astype(np.uint8)
        cv2.imwrite(str(folder / f"f{k:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        frames.append(img)
    return frames


def read_outputs(folder):
    files = sorted(folder.glob("*.png"))
    return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files], [f.name for f in files]


def expected_sequential(tiny_model_dir, frames, steps, f=1):
    """The same settings without stream batching: no latency, output k is input k's result."""
    from stream_core.engine import StreamEngine
    from stream_core.models import ModelSpec, load_components
    from stream_core.pipeline import StreamSettings

    comp = load_components(ModelSpec(model=str(tiny_model_dir), device="cpu"))
    s = StreamSettings(width=SIZE, height=SIZE, t_index_list=steps, seed=2, denoising_batch=False)
    eng = StreamEngine(comp, s, "a neon city at night, cinematic", "")
    return [eng.process(fr[None])[0] for fr in frames]


@pytest.mark.parametrize("f", [1, 2])
def test_render_folder_is_frame_accurate(tmp_path, tiny_model_dir, f):
    frames = write_frames(tmp_path / "in", 5)
    out = tmp_path / "out"
    rc = main(["render", str(tmp_path / "in"), str(out), "--model", str(tiny_model_dir), "--device", "cpu",
               "--size", f"{SIZE}x{SIZE}", "--steps", "20,32,45", "--frame-buffer", str(f)])
    assert rc == 0
    imgs, names = read_outputs(out)
    assert names == [f"{k:06d}.png" for k in range(5)]
    ref = expected_sequential(tiny_model_dir, frames, (20, 32, 45))
    for k in range(5):
        diff = np.abs(imgs[k].astype(int) - ref[k].astype(int)).max()
        assert diff <= 2, f"output {k} is not the result of input {k} (max diff {diff})"
    assert not np.array_equal(imgs[0], imgs[1])


def test_render_video_file(tmp_path, tiny_model_dir):
    video = tmp_path / "clip.avi"
    wr = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 80))
    assert wr.isOpened()
    for k in range(6):
        img = np.full((80, 96, 3), (k * 40) % 256, np.uint8)
        img[:, : 10 + k * 10] = 200
        wr.write(img)
    wr.release()
    out = tmp_path / "out"
    rc = main(["render", str(video), str(out), "--model", str(tiny_model_dir), "--device", "cpu",
               "--size", f"{SIZE}x{SIZE}", "--strength", "0.6", "--cfg", "full", "--guidance", "1.5"])
    assert rc == 0
    imgs, _ = read_outputs(out)
    assert len(imgs) == 6 and imgs[0].shape == (SIZE, SIZE, 3)
    smooth = tmp_path / "smooth"
    rc = main(["render", str(video), str(smooth), "--model", str(tiny_model_dir), "--device", "cpu",
               "--size", f"{SIZE}x{SIZE}", "--strength", "0.6", "--cfg", "full", "--guidance", "1.5",
               "--smoothing", "0.8"])
    assert rc == 0
    simgs, _ = read_outputs(smooth)

    def change(frames):
        return sum(float(np.abs(b.astype(int) - a.astype(int)).mean()) for a, b in zip(frames, frames[1:], strict=False))

    np.testing.assert_array_equal(simgs[0], imgs[0])  # the first frame has nothing to blend with
    assert change(simgs) < change(imgs)  # steadier from frame to frame


@pytest.mark.parametrize(
    "argv,message",
    [
        (["render", "{tmp}/missing", "{tmp}/o"], "no such file or folder"),
        (["render", "{tmp}/empty", "{tmp}/o"], "no images"),
        (["render", "{tmp}/bad.mp4", "{tmp}/o"], "cannot open this video"),
    ],
)
def test_render_bad_input_is_a_clear_error(tmp_path, tiny_model_dir, caplog, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    args = [a.format(tmp=tmp_path) for a in argv] + ["--model", str(tiny_model_dir), "--device", "cpu"]
    assert main(args) != 0
    assert message in caplog.text


def test_render_bad_arguments_exit_nonzero(tmp_path, tiny_model_dir, caplog):
    with pytest.raises(SystemExit) as exc:
        main(["render", str(tmp_path), str(tmp_path / "o"), "--size", "100x7"])
    assert exc.value.code != 0
    with pytest.raises(SystemExit):
        main(["render", str(tmp_path), str(tmp_path / "o"), "--steps", "45,32"])
    assert main(["render", str(tmp_path), str(tmp_path / "o"), "--smoothing", "1.5"]) != 0
    assert "smoothing should be in [0, 0.95] but is 1.5" in caplog.text


def test_make_tiny_cli(tmp_path):
    assert main(["models", "make-tiny", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "unet" / "config.json").exists()
