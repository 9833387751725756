"""Contract tests: our Spout source/sink against FakeSpoutGL (the documented SpoutGL API).

They pin the rules the real library imposes and that cannot be checked on Linux: createOpenGL
first and every call on that one thread, isFrameNew gating, isUpdated -> reallocation, the
sendImage buffer contract and return value, release on close.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from bridge.io.base import PixelFormat, SinkFailed, SourceGone
from bridge.io.spout import (
    SpoutSink,
    SpoutSinkConfig,
    SpoutSource,
    SpoutSourceConfig,
    list_senders,
)
from tests.io.fakes.fake_spoutgl import GL_BGRA_EXT, GL_RGBA, FakeSpoutGL, SpoutWorld


def rgba_image(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 4), dtype=np.uint8)
    img[..., 3] = 255
    return img


def run_in_thread(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` on a fresh thread; return (result, thread id) or re-raise its exception."""
    box: dict[str, Any] = {}

    def target() -> None:
        box["tid"] = threading.get_ident()
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed back to the test thread
            box["error"] = exc

    th = threading.Thread(target=target)
    th.start()
    th.join(10)
    if "error" in box:
        raise box["error"]
    return box.get("result"), box["tid"]


def test_source_calls_createopengl_first_and_everything_on_one_thread(
    spout_world: SpoutWorld,
) -> None:
    spout_world.publish("TD", rgba_image(32, 16))

    def lifecycle() -> list[Any]:
        src = SpoutSource(SpoutSourceConfig(name="TD"))
        src.open()
        frames = [src.read(0.2)]
        spout_world.publish("TD", rgba_image(32, 16, seed=1))
        frames.append(src.read(0.2))
        src.close()
        return frames

    frames, worker = run_in_thread(lifecycle)
    assert all(f is not None for f in frames)
    (receiver,) = spout_world.objects("receiver")
    calls = spout_world.calls_on(receiver)
    assert calls[0].method == "createOpenGL"
    assert {c.thread for c in calls} == {worker}
    assert [c.method for c in calls][-2:] == ["releaseReceiver", "closeOpenGL"]
    assert spout_world.violations == []


def test_source_refuses_calls_from_another_thread(spout_world: SpoutWorld) -> None:
    spout_world.publish("TD", rgba_image(8, 8))
    src = SpoutSource(SpoutSourceConfig(name="TD"))
    src.open()
    n_calls = len(spout_world.calls)
    with pytest.raises(RuntimeError, match="another thread"):
        run_in_thread(lambda: src.read(0.01))
    assert len(spout_world.calls) == n_calls, "nothing may reach Spout from the wrong thread"
    src.close()
    assert spout_world.violations == []


def test_frame_content_and_format(spout_world: SpoutWorld) -> None:
    img = rgba_image(40, 24)
    spout_world.publish("TD", img)
    src = SpoutSource(SpoutSourceConfig(name="TD"))
    src.open()
    frame = src.read(0.5)
    assert frame is not None
    assert frame.fmt is PixelFormat.RGBA
    assert frame.data.shape == (24, 40, 4) and frame.data.dtype == np.uint8
    np.testing.assert_array_equal(frame.data, img)
    receive_formats = [c.args for c in spout_world.calls if c.method == "receiveImage"]
    assert receive_formats, "receiveImage must be used"
    src.close()


def test_bgra_option_asks_spout_for_bgra(spout_world: SpoutWorld) -> None:
    img = rgba_image(8, 4)
    spout_world.publish("TD", img)
    src = SpoutSource(SpoutSourceConfig(name="TD", pixel_format="bgra"))
    src.open()
    frame = src.read(0.5)
    assert frame is not None and frame.fmt is PixelFormat.BGRA
    np.testing.assert_array_equal(frame.data, img[..., [2, 1, 0, 3]])
    src.close()


def test_no_new_frame_means_no_frame(spout_world: SpoutWorld) -> None:
    spout_world.publish("TD", rgba_image(16, 16))
    src = SpoutSource(SpoutSourceConfig(name="TD"))
    src.open()
    assert src.read(0.2) is not None
    # receiveImage keeps returning True, but isFrameNew() is False: no repeated frame
    assert src.read(0.05) is None
    assert any(c.method == "isFrameNew" for c in spout_world.calls)
    spout_world.publish("TD", rgba_image(16, 16, seed=3))
    second = src.read(0.2)
    assert second is not None and second.seq == 1
    src.close()


def test_returned_frames_are_not_overwritten_by_later_receives(spout_world: SpoutWorld) -> None:
    first_img, second_img = rgba_image(8, 8, 1), rgba_image(8, 8, 2)
    spout_world.publish("TD", first_img)
    src = SpoutSource(SpoutSourceConfig(name="TD"))
    src.open()
    first = src.read(0.2)
    spout_world.publish("TD", second_img)
    second = src.read(0.2)
    assert first is not None and second is not None
    np.testing.assert_array_equal(first.data, first_img)
    np.testing.assert_array_equal(second.data, second_img)
    src.close()


def test_resize_reallocates_from_sender_size(spout_world: SpoutWorld) -> None:
    spout_world.publish("TD", rgba_image(64, 32))
    src = SpoutSource(SpoutSourceConfig(name="TD"))
    src.open()
    f1 = src.read(0.2)
    assert f1 is not None and f1.data.shape == (32, 64, 4)
    big = rgba_image(128, 96, seed=5)
    spout_world.publish("TD", big)
    before = len(spout_world.calls)
    f2 = src.read(0.5)
    assert f2 is not None and f2.data.shape == (96, 128, 4)
    np.testing.assert_array_equal(f2.data, big)
    after = spout_world.calls[before:]
    methods = [c.method for c in after]
    # the resize is reported by isUpdated, then the size is asked, then a receive with a
    # buffer of the new size copies the frame
    i_updated = methods.index("isUpdated")
    i_width = methods.index("getSenderWidth", i_updated)
    receives = [c.args[0] for c in after[i_width:] if c.method == "receiveImage"]
    assert receives and receives[-1] == 128 * 96 * 4
    assert "getSenderName" not in [c.method for c in spout_world.calls], (
        "getSenderName is mis-wired in SpoutGL: never call it"
    )
    assert spout_world.violations == []
    src.close()


def test_buffer_error_from_a_racing_resize_is_a_reallocation(
    spout_world: SpoutWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    spout_world.publish("TD", rgba_image(16, 16))
    src = SpoutSource(SpoutSourceConfig(name="TD"))
    src.open()
    assert src.read(0.2) is not None
    src._buf = np.zeros((2, 2, 4), np.uint8)  # as if the sender grew behind our back
    spout_world.publish("TD", rgba_image(16, 16, seed=9))
    frame = src.read(0.5)
    assert frame is not None and frame.data.shape == (16, 16, 4)
    src.close()


def test_read_is_bounded_even_if_spout_keeps_reporting_updates(
    spout_world: SpoutWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    spout_world.publish("TD", rgba_image(8, 8))
    src = SpoutSource(SpoutSourceConfig(name="TD"))
    src.open()
    monkeypatch.setattr(type(src._recv), "isUpdated", lambda self: True)
    t0 = time.monotonic()
    assert src.read(0.05) is None
    assert time.monotonic() - t0 < 1.0, "read() must honour its timeout"
    src.close()


def test_active_sender_when_name_is_empty(spout_world: SpoutWorld) -> None:
    spout_world.publish("first", rgba_image(8, 8, 1))
    spout_world.publish("second", rgba_image(4, 4, 2))
    src = SpoutSource(SpoutSourceConfig(name=""))
    src.open()
    frame = src.read(0.2)
    assert frame is not None and frame.data.shape == (8, 8, 4)  # the active one is "first"
    assert any(c.method == "setReceiverName" and c.args == ("",) for c in spout_world.calls)
    src.close()


def test_missing_sender_is_source_gone_listing_senders(spout_world: SpoutWorld) -> None:
    spout_world.publish("Resolume", rgba_image(4, 4))
    src = SpoutSource(SpoutSourceConfig(name="TD"))
    with pytest.raises(SourceGone, match="'TD' not found.*Resolume"):
        src.open()
    (receiver,) = spout_world.objects("receiver")
    assert [c.method for c in spout_world.calls_on(receiver)][-2:] == [
        "releaseReceiver",
        "closeOpenGL",
    ]
    src.close()  # safe after a failed open
    assert spout_world.violations == []


def test_sender_closing_raises_source_gone(spout_world: SpoutWorld) -> None:
    spout_world.publish("TD", rgba_image(8, 8))
    src = SpoutSource(SpoutSourceConfig(name="TD"))
    src.open()
    assert src.read(0.2) is not None
    spout_world.close_sender("TD")
    with pytest.raises(SourceGone, match="closed"):
        src.read(0.2)
    src.close()
    src.close()


def test_sink_contract(spout_world: SpoutWorld) -> None:
    def lifecycle() -> None:
        sink = SpoutSink(SpoutSinkConfig(name="SD Out"))
        sink.open(48, 32, 30.0)
        rgb = np.zeros((32, 48, 3), np.uint8)
        rgb[..., 0] = 200
        rgb[..., 2] = np.arange(48, dtype=np.uint8)[None, :]
        # a non-contiguous view must still reach Spout as a contiguous buffer
        sink.send(np.asfortranarray(rgb))
        assert sink.frames_sent == 1
        shared = spout_world.senders["SD Out"]
        assert shared.pixels.shape == (32, 48, 4)
        np.testing.assert_array_equal(shared.pixels[..., :3], rgb)
        assert (shared.pixels[..., 3] == 255).all()
        sink.close()

    _, worker = run_in_thread(lifecycle)
    (sender,) = spout_world.objects("sender")
    methods = [c.method for c in spout_world.calls_on(sender)]
    assert methods[0] == "createOpenGL"
    assert methods.index("setCPUshare") < methods.index("sendImage")
    assert methods[-2:] == ["releaseSender", "closeOpenGL"]
    assert {c.thread for c in spout_world.calls_on(sender)} == {worker}
    (sent,) = spout_world.sent
    assert sent == {
        "nbytes": 48 * 32 * 4,
        "contiguous": True,
        "width": 48,
        "height": 32,
        "format": GL_RGBA,
    }
    assert "SD Out" not in spout_world.senders, "close must release the sender"
    assert spout_world.violations == []


def test_sink_follows_frame_size_changes(spout_world: SpoutWorld) -> None:
    sink = SpoutSink(SpoutSinkConfig(name="SD Out"))
    sink.open(16, 16, 30.0)
    sink.send(np.zeros((16, 16, 3), np.uint8))
    sink.send(np.zeros((24, 40, 3), np.uint8))
    assert [(s["width"], s["height"], s["nbytes"]) for s in spout_world.sent] == [
        (16, 16, 16 * 16 * 4),
        (40, 24, 40 * 24 * 4),
    ]
    sink.close()


def test_sink_counts_refusals_and_gives_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # an older wrapper without setCPUshare on a machine without GL/DX interop: every frame refused
    world = SpoutWorld(gldx_ready=False)
    FakeSpoutGL(world, cpu_share_api=False).install(monkeypatch)
    sink = SpoutSink(SpoutSinkConfig(name="SD Out", max_failures=3))
    sink.open(8, 8, 30.0)
    frame = np.zeros((8, 8, 3), np.uint8)
    sink.send(frame)
    sink.send(frame)
    assert sink.frames_refused == 2 and sink.frames_sent == 0
    assert "refused" in caplog.text
    with pytest.raises(SinkFailed, match="3 frames in a row"):
        sink.send(frame)
    sink.close()


def test_sink_recovers_after_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    world = SpoutWorld(gldx_ready=False)
    FakeSpoutGL(world, cpu_share_api=False).install(monkeypatch)
    sink = SpoutSink(SpoutSinkConfig(name="SD Out", max_failures=2))
    sink.open(8, 8, 30.0)
    frame = np.zeros((8, 8, 3), np.uint8)
    sink.send(frame)
    world.gldx_ready = True  # interop became available
    sink.send(frame)
    sink.send(frame)
    world.gldx_ready = False
    sink.send(frame)  # one refusal after successes does not reach max_failures=2
    assert (sink.frames_sent, sink.frames_refused) == (2, 2)
    sink.close()


def test_sink_to_source_round_trip_through_fake(spout_world: SpoutWorld) -> None:
    sink = SpoutSink(SpoutSinkConfig(name="loop"))
    sink.open(20, 10, 30.0)
    rgb = np.random.default_rng(0).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    sink.send(rgb)
    src = SpoutSource(SpoutSourceConfig(name="loop"))
    src.open()
    frame = src.read(0.2)
    assert frame is not None
    np.testing.assert_array_equal(frame.data[..., :3], rgb)
    src.close()
    sink.close()


def test_bgra_constant_is_what_the_fake_documents() -> None:
    # guards the numbers the backend falls back on when SpoutGL.enums is missing
    from bridge.io import spout

    assert (spout._GL_RGBA, spout._GL_BGRA_EXT) == (GL_RGBA, GL_BGRA_EXT)


def test_list_senders_uses_the_sender_list(spout_world: SpoutWorld) -> None:
    spout_world.publish("b", rgba_image(2, 2))
    spout_world.publish("a", rgba_image(2, 2))
    assert list_senders(0.1) == ["a", "b"]
    (receiver,) = spout_world.objects("receiver")
    methods = [c.method for c in spout_world.calls_on(receiver)]
    assert methods[0] == "createOpenGL" and methods[-1] == "closeOpenGL"
    assert spout_world.violations == []
