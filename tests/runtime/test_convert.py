from __future__ import annotations

import time

import numpy as np
import pytest

from bridge.io.base import Frame, FrameError, PixelFormat
from bridge.runtime.convert import (
    MAX_DIM,
    Preprocessor,
    Resizer,
    compute_geometry,
    scale_output,
    to_rgb,
    validate_frame,
    yuv_matrix_for,
)

# -- conversions -------------------------------------------------------------------------------


def _uniform(fmt: PixelFormat, pixel: tuple[int, ...], w: int = 8, h: int = 4) -> Frame:
    data = np.empty((h, w, len(pixel)), dtype=np.uint8)
    data[:] = pixel
    return Frame(data, fmt)


@pytest.mark.parametrize(
    ("fmt", "pixel", "rgb"),
    [
        (PixelFormat.BGRA, (10, 20, 30, 255), (30, 20, 10)),
        (PixelFormat.RGBA, (10, 20, 30, 40), (10, 20, 30)),
        (PixelFormat.BGR, (10, 20, 30), (30, 20, 10)),
        (PixelFormat.RGB, (10, 20, 30), (10, 20, 30)),
    ],
)
def test_channel_order(fmt: PixelFormat, pixel: tuple[int, ...], rgb: tuple[int, int, int]) -> None:
    frame = _uniform(fmt, pixel)
    out = to_rgb(frame)
    assert out.shape == (4, 8, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert (out == rgb).all()
    assert not np.shares_memory(out, frame.data)


def test_to_rgb_writes_into_out_and_keeps_pixels_apart() -> None:
    data = np.zeros((2, 3, 4), dtype=np.uint8)
    data[0, 0] = (1, 2, 3, 4)  # B G R A
    data[1, 2] = (200, 100, 50, 0)
    out = np.full((2, 3, 3), 77, dtype=np.uint8)
    result = to_rgb(Frame(data, PixelFormat.BGRA), out=out)
    assert result is out
    assert tuple(out[0, 0]) == (3, 2, 1)
    assert tuple(out[1, 2]) == (50, 100, 200)
    assert tuple(out[0, 1]) == (0, 0, 0)
    with pytest.raises(ValueError):
        to_rgb(Frame(data, PixelFormat.BGRA), out=np.empty((3, 2, 3), np.uint8))


def _encode_uyvy(rgb: tuple[int, int, int], kr: float, kb: float, w: int = 8, h: int = 2) -> Frame:
    """Limited-range Y'CbCr encoding of a uniform colour, packed as UYVY."""
    r, g, b = (c / 255.0 for c in rgb)
    kg = 1 - kr - kb
    y = kr * r + kg * g + kb * b
    cb = (b - y) / (2 * (1 - kb))
    cr = (r - y) / (2 * (1 - kr))
    yq, uq, vq = round(16 + 219 * y), round(128 + 224 * cb), round(128 + 224 * cr)
    data = np.empty((h, w, 2), dtype=np.uint8)
    data[:, 0::2, 0] = uq
    data[:, 1::2, 0] = vq
    data[..., 1] = yq
    return Frame(data, PixelFormat.UYVY)


COLOURS = [
    (255, 255, 255),
    (0, 0, 0),
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (191, 191, 0),  # 75 % yellow bar
    (0, 191, 191),  # 75 % cyan bar
    (191, 0, 191),  # 75 % magenta bar
    (128, 64, 32),
]


@pytest.mark.parametrize("colour", COLOURS)
@pytest.mark.parametrize(
    ("matrix", "kr", "kb"), [("bt601", 0.299, 0.114), ("bt709", 0.2126, 0.0722)]
)
def test_uyvy_known_colours(
    colour: tuple[int, int, int], matrix: str, kr: float, kb: float
) -> None:
    frame = _encode_uyvy(colour, kr, kb)
    out = to_rgb(frame, yuv=matrix)  # type: ignore[arg-type]
    assert out.shape == (2, 8, 3)
    diff = np.abs(out.astype(int) - np.array(colour)).max()
    assert diff <= 2, (matrix, colour, out[0, 0])


def test_uyvy_matrix_matters_and_auto_picks_by_height() -> None:
    red709 = _encode_uyvy((255, 0, 0), 0.2126, 0.0722)
    assert np.abs(to_rgb(red709, yuv="bt709")[0, 0].astype(int) - (255, 0, 0)).max() <= 2
    assert np.abs(to_rgb(red709, yuv="bt601")[0, 0].astype(int) - (255, 0, 0)).max() > 10
    assert yuv_matrix_for(480, "auto") == "bt601"
    assert yuv_matrix_for(576, "auto") == "bt601"
    assert yuv_matrix_for(720, "auto") == "bt709"
    assert yuv_matrix_for(1080, "bt601") == "bt601"
    with pytest.raises(ValueError):
        yuv_matrix_for(1080, "bt2020")  # type: ignore[arg-type]


def test_uyvy_luma_ramp_and_per_pixel_luma() -> None:
    # Grey ramp: chroma neutral, each pixel its own luma (Y0 and Y1 differ inside a pair).
    w = 220
    data = np.empty((1, w, 2), dtype=np.uint8)
    data[..., 0] = 128
    data[0, :, 1] = np.arange(16, 16 + w)
    for matrix in ("bt601", "bt709"):
        out = to_rgb(Frame(data, PixelFormat.UYVY), yuv=matrix)  # type: ignore[arg-type]
        expect = np.clip(np.rint((np.arange(16, 16 + w) - 16) * 255 / 219), 0, 255)
        assert np.abs(out[0, :, 0].astype(int) - expect).max() <= 1
        grey = out.astype(int)
        assert np.abs(grey[0, :, 0] - grey[0, :, 1]).max() <= 1  # neutral: no colour cast
        assert np.abs(grey[0, :, 1] - grey[0, :, 2]).max() <= 1


def test_padded_row_view_is_accepted() -> None:
    big = np.zeros((4, 10, 4), dtype=np.uint8)
    big[..., 0] = 9  # B
    big[..., 2] = 99  # R
    view = big[:, :6]  # rows padded by 4 pixels: a plain view
    assert not view.flags.c_contiguous
    out = to_rgb(Frame(view, PixelFormat.BGRA))
    assert out.shape == (4, 6, 3) and (out == (99, 0, 9)).all()
    uyvy = np.full((2, 12, 2), 128, dtype=np.uint8)[:, :8]
    assert to_rgb(Frame(uyvy, PixelFormat.UYVY), yuv="bt709").shape == (2, 8, 3)
    assert to_rgb(Frame(uyvy, PixelFormat.UYVY), yuv="bt601").shape == (2, 8, 3)


# -- garbage -----------------------------------------------------------------------------------

_base = np.zeros((8, 8, 4), dtype=np.uint8)

GARBAGE = {
    "0x0": Frame(np.zeros((0, 0, 4), np.uint8), PixelFormat.BGRA),
    "zero width": Frame(np.zeros((8, 0, 4), np.uint8), PixelFormat.BGRA),
    "float32": Frame(np.zeros((8, 8, 4), np.float32), PixelFormat.BGRA),
    "uint16": Frame(np.zeros((8, 8, 4), np.uint16), PixelFormat.RGBA),
    "2-d": Frame(np.zeros((8, 8), np.uint8), PixelFormat.RGB),
    "channels vs format": Frame(np.zeros((8, 8, 3), np.uint8), PixelFormat.BGRA),
    "uyvy with 4 channels": Frame(np.zeros((8, 8, 4), np.uint8), PixelFormat.UYVY),
    "odd uyvy width": Frame(np.zeros((8, 7, 2), np.uint8), PixelFormat.UYVY),
    "too wide": Frame(np.zeros((1, MAX_DIM + 1, 3), np.uint8), PixelFormat.RGB),
    "too tall": Frame(np.zeros((MAX_DIM + 1, 1, 3), np.uint8), PixelFormat.RGB),
    "every other pixel": Frame(np.zeros((8, 16, 4), np.uint8)[:, ::2], PixelFormat.BGRA),
    "reversed channels": Frame(_base[..., ::-1], PixelFormat.BGRA),
    "flipped rows": Frame(_base[::-1], PixelFormat.BGRA),
    "transposed": Frame(np.zeros((8, 16, 4), np.uint8).transpose(1, 0, 2), PixelFormat.BGRA),
    "broadcast rows": Frame(
        np.broadcast_to(np.zeros((1, 8, 4), np.uint8), (8, 8, 4)), PixelFormat.BGRA
    ),
    "not an array": Frame([[1, 2, 3]], PixelFormat.RGB),  # type: ignore[arg-type]
    "unknown format": Frame(np.zeros((8, 8, 3), np.uint8), "yuv420"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_is_rejected(name: str) -> None:
    frame = GARBAGE[name]
    with pytest.raises(FrameError):
        validate_frame(frame)
    with pytest.raises(FrameError):
        to_rgb(frame)
    with pytest.raises(FrameError):
        Preprocessor(Resizer(16, 16))(frame)


def test_not_a_frame_is_rejected() -> None:
    with pytest.raises(FrameError):
        validate_frame(np.zeros((8, 8, 3), np.uint8))  # type: ignore[arg-type]


def test_custom_size_cap() -> None:
    frame = Frame(np.zeros((10, 20, 3), np.uint8), PixelFormat.RGB)
    validate_frame(frame)
    with pytest.raises(FrameError, match="cap"):
        validate_frame(frame, max_dim=16)


# -- resize geometry ---------------------------------------------------------------------------


def test_fit_letterbox_geometry_and_black_bars() -> None:
    geo = compute_geometry(1920, 1080, 512, 512, "fit")
    assert geo.crop == (0, 0, 1920, 1080)
    assert geo.dest == (0, 112, 512, 288)
    assert geo.halvings == 1 and geo.final == "linear"
    img = np.full((1080, 1920, 3), 200, dtype=np.uint8)
    out = Resizer(512, 512, "fit")(img)
    assert out.shape == (512, 512, 3)
    assert (out[:112] == 0).all() and (out[400:] == 0).all()
    assert (out[112:400] == 200).all()


def test_fit_pillarbox() -> None:
    geo = compute_geometry(1080, 1920, 512, 512, "fit")
    assert geo.dest == (112, 0, 288, 512)
    img = np.full((1920, 1080, 3), 50, dtype=np.uint8)
    out = Resizer(512, 512, "fit")(img)
    assert (out[:, :112] == 0).all() and (out[:, 400:] == 0).all()
    assert (out[:, 112:400] == 50).all()


def test_fill_crops_the_centre() -> None:
    geo = compute_geometry(1920, 1080, 512, 512, "fill")
    assert geo.crop == (420, 0, 1080, 1080)
    assert geo.dest == (0, 0, 512, 512)
    # A horizontal ramp: the output's left edge must come from input column 420, right from 1499.
    ramp = np.tile((np.arange(1920) // 8).astype(np.uint8)[None, :, None], (1080, 1, 3))
    out = Resizer(512, 512, "fill")(ramp)
    assert out.shape == (512, 512, 3)
    assert abs(int(out[256, 0, 0]) - 420 // 8) <= 1
    assert abs(int(out[256, -1, 0]) - 1499 // 8) <= 1
    assert (out > 0).all()  # no bars


def test_stretch_uses_everything() -> None:
    geo = compute_geometry(1920, 1080, 512, 512, "stretch")
    assert geo.crop == (0, 0, 1920, 1080) and geo.dest == (0, 0, 512, 512)
    ramp = np.tile((np.arange(1920) // 8).astype(np.uint8)[None, :, None], (1080, 1, 3))
    out = Resizer(512, 512, "stretch")(ramp)
    assert int(out[0, 0, 0]) <= 2 and int(out[0, -1, 0]) >= 236


def test_upscale_and_identity() -> None:
    geo = compute_geometry(256, 256, 512, 512, "fit")
    assert geo.final == "linear" and geo.halvings == 0 and geo.dest == (0, 0, 512, 512)
    img = np.full((256, 256, 3), 123, np.uint8)
    assert (Resizer(512, 512)(img) == 123).all()
    same = np.zeros((512, 512, 3), np.uint8)
    assert Resizer(512, 512)(same) is same
    out = np.empty_like(same)
    assert Resizer(512, 512)(same, out=out) is out


def test_fast_and_area_quality_agree_on_smooth_images() -> None:
    yy, xx = np.mgrid[0:1080, 0:1920]
    img = np.dstack([(xx * 255 // 1919), (yy * 255 // 1079), ((xx + yy) % 256)]).astype(np.uint8)
    img[..., 2] = 90
    fast = Resizer(512, 512, "fit", "fast")(img)
    area = Resizer(512, 512, "fit", "area")(img)
    assert compute_geometry(1920, 1080, 512, 512, "fit", "area").final == "area"
    assert np.abs(fast.astype(int) - area.astype(int)).mean() < 1.5


def test_four_k_downscale_uses_several_halvings() -> None:
    geo = compute_geometry(3840, 2160, 512, 512, "fill")
    assert geo.crop == (840, 0, 2160, 2160)
    assert geo.halvings == 2 and geo.final == "linear"
    out = Resizer(512, 512, "fill")(np.full((2160, 3840, 3), 17, np.uint8))
    assert (out == 17).all()


def test_size_change_mid_stream_is_absorbed() -> None:
    pre = Preprocessor(Resizer(512, 512, "fit"))
    sizes = [(640, 480), (640, 480), (1920, 1080), (1920, 1080), (1920, 1080), (640, 480)]
    for w, h in sizes:
        data = np.full((h, w, 4), 255, np.uint8)
        out = pre(Frame(data, PixelFormat.BGRA))
        assert out.shape == (512, 512, 3)
    assert pre.resizer.recomputes == 3  # once per change, not per frame


@pytest.mark.parametrize("fmt", ["bgra", "rgba", "bgr", "rgb", "uyvy"])
@pytest.mark.parametrize("policy", ["fit", "fill", "stretch"])
@pytest.mark.parametrize("in_size", [(998, 500), (640, 480), (100, 300), (48, 48)])
def test_preprocessor_matches_convert_then_resize(
    fmt: str, policy: str, in_size: tuple[int, int]
) -> None:
    w, h = in_size
    channels = {"bgra": 4, "rgba": 4, "bgr": 3, "rgb": 3, "uyvy": 2}[fmt]
    data = np.random.default_rng(w * h).integers(0, 256, (h, w, channels), dtype=np.uint8)
    frame = Frame(data, PixelFormat(fmt))
    for yuv in ("bt601", "bt709") if fmt == "uyvy" else ("auto",):
        pre = Preprocessor(Resizer(96, 96, policy), yuv=yuv)  # type: ignore[arg-type]
        expected = Resizer(96, 96, policy)(to_rgb(frame, yuv=yuv))  # type: ignore[arg-type]
        assert np.array_equal(pre(frame), expected), (fmt, policy, in_size, yuv)


def test_preprocessor_outputs_are_fresh_arrays() -> None:
    pre = Preprocessor(Resizer(32, 32))
    rgb = Frame(np.full((32, 32, 3), 5, np.uint8), PixelFormat.RGB)
    a, b = pre(rgb), pre(rgb)
    assert a is not b and not np.shares_memory(a, rgb.data)
    big = Frame(np.full((64, 64, 4), 5, np.uint8), PixelFormat.BGRA)
    c, d = pre(big), pre(big)
    assert c is not d and not np.shares_memory(c, d)
    rgb_big = Frame(np.full((64, 64, 3), 5, np.uint8), PixelFormat.RGB)
    assert not np.shares_memory(pre(rgb_big), rgb_big.data)


def test_scale_output() -> None:
    rgb = np.full((512, 512, 3), 80, np.uint8)
    assert scale_output(rgb, 512, 512) is rgb
    wide = scale_output(rgb, 1024, 576)
    assert wide.shape == (576, 1024, 3)
    assert (wide[:, :224] == 0).all() and (wide[:, 224:800] == 80).all()
    assert (scale_output(rgb, 300, 100, "stretch") == 80).all()


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="policy"):
        Resizer(512, 512, "squash")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Resizer(0, 512)
    with pytest.raises(ValueError, match="quality"):
        Resizer(512, 512, "fit", "cubic")  # type: ignore[arg-type]


def test_512_bgra_to_rgb_costs_well_under_a_millisecond() -> None:
    pre = Preprocessor(Resizer(512, 512, "fit"))
    frame = Frame(np.random.default_rng(0).integers(0, 255, (512, 512, 4), np.uint8), "bgra")  # type: ignore[arg-type]
    for _ in range(20):
        pre(frame)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        pre(frame)
        times.append(time.perf_counter() - t0)
    assert float(np.median(times)) < 1e-3
