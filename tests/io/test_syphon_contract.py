"""Contract tests: our Syphon source/sink against FakeSyphon (the documented syphon-python API).

Pinned: the server directory is only read in open() (each read spins the run loop for a second),
has_new_frame gating, texture channel order -> PixelFormat, an invalid client -> SourceGone,
the sink's texture/copy/publish sequence and stop() on close.
"""

from __future__ import annotations

import numpy as np
import pytest

from bridge.io.base import PixelFormat, SourceGone
from bridge.io.syphon import (
    SyphonSink,
    SyphonSinkConfig,
    SyphonSource,
    SyphonSourceConfig,
    list_senders,
    match_server,
)
from tests.io.fakes.fake_syphon import BGRA8, RGBA8, SyphonServerDescription, SyphonWorld


def image(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)


def test_directory_is_read_in_open_only(syphon_world: SyphonWorld) -> None:
    syphon_world.publish("Main", "Resolume Arena", image(16, 8))
    src = SyphonSource(SyphonSourceConfig(name="Main"))
    src.open()
    reads_after_open = syphon_world.directory_reads
    assert reads_after_open == 1
    for i in range(20):
        syphon_world.publish("Main", "Resolume Arena", image(16, 8, seed=i))
        assert src.read(0.05) is not None
        src.read(0.0)
    assert syphon_world.directory_reads == reads_after_open
    src.close()


def test_bgra_texture_gives_bgra_frame(syphon_world: SyphonWorld) -> None:
    img = image(24, 12)
    syphon_world.publish("Out", "TouchDesigner", img, pixel_format=BGRA8)
    src = SyphonSource(SyphonSourceConfig(name="Out"))
    src.open()
    frame = src.read(0.2)
    assert frame is not None
    assert frame.fmt is PixelFormat.BGRA and frame.data.shape == (12, 24, 4)
    np.testing.assert_array_equal(frame.data, img)
    src.close()


def test_rgba_texture_gives_rgba_and_odd_formats_are_dropped(syphon_world: SyphonWorld) -> None:
    syphon_world.publish("Out", "App", image(4, 4), pixel_format=RGBA8)
    src = SyphonSource(SyphonSourceConfig(name="Out"))
    src.open()
    frame = src.read(0.2)
    assert frame is not None and frame.fmt is PixelFormat.RGBA
    syphon_world.publish("Out", "App", image(4, 4), pixel_format=115)  # RGBA16Float
    assert src.read(0.05) is None
    assert src.frames_dropped == 1
    src.close()


def test_no_new_frame_means_no_frame(syphon_world: SyphonWorld) -> None:
    syphon_world.publish("Out", "App", image(8, 8))
    src = SyphonSource(SyphonSourceConfig(name="Out"))
    src.open()
    assert src.read(0.2) is not None
    assert src.read(0.03) is None
    syphon_world.publish("Out", "App", image(8, 8, seed=1))
    second = src.read(0.2)
    assert second is not None and second.seq == 1
    src.close()


def test_match_by_app_name_and_app_filter(syphon_world: SyphonWorld) -> None:
    syphon_world.publish("", "Resolume Arena", image(4, 4))
    syphon_world.publish("Composition", "Resolume Avenue", image(8, 8))
    src = SyphonSource(SyphonSourceConfig(name="resolume arena"))
    src.open()
    assert src.read(0.2) is not None
    assert "Resolume Arena" in src.describe()
    src.close()
    src = SyphonSource(SyphonSourceConfig(name="Composition", app="Resolume Avenue"))
    src.open()
    frame = src.read(0.2)
    assert frame is not None and frame.data.shape == (8, 8, 4)
    src.close()


def test_match_server_rules() -> None:
    servers = [
        SyphonServerDescription("1", "Out", "TouchDesigner", None, None),
        SyphonServerDescription("2", "out", "MadMapper", None, None),
        SyphonServerDescription("3", "", "Resolume Arena", None, None),
    ]
    assert match_server(servers, "out").uuid == "2"  # exact beats case-insensitive
    assert match_server(servers, "OUT").uuid == "1"
    assert match_server(servers, "Resolume Arena").uuid == "3"
    assert match_server(servers, "").uuid == "1"
    assert match_server(servers, "Out", app="MadMapper").uuid == "2"
    assert match_server(servers, "Out", app="Resolume Arena") is None
    assert match_server(servers, "nope") is None


def test_missing_server_is_source_gone(syphon_world: SyphonWorld) -> None:
    syphon_world.publish("Other", "App", image(2, 2))
    with pytest.raises(SourceGone, match="'Main' not found.*Other"):
        SyphonSource(SyphonSourceConfig(name="Main")).open()


def test_server_going_away_is_source_gone_and_close_stops_client(
    syphon_world: SyphonWorld,
) -> None:
    syphon_world.publish("Out", "App", image(4, 4))
    src = SyphonSource(SyphonSourceConfig(name="Out"))
    src.open()
    assert src.read(0.2) is not None
    syphon_world.retire("Out")
    with pytest.raises(SourceGone, match="went away"):
        src.read(0.1)
    src.close()
    assert "SyphonMetalClient.stop" in [m for m, _ in syphon_world.calls]
    src.close()


def test_sink_contract_and_round_trip(syphon_world: SyphonWorld) -> None:
    sink = SyphonSink(SyphonSinkConfig(name="SD Out"))
    sink.open(32, 16, 30.0)
    rgb = np.random.default_rng(1).integers(0, 256, (16, 32, 3), dtype=np.uint8)
    sink.send(np.asfortranarray(rgb))
    methods = [m for m, _ in syphon_world.calls]
    assert methods[:2] == ["SyphonMetalServer.__init__", "raw.create_mtl_texture"]
    assert methods.index("numpy.copy_image_to_mtl_texture") < methods.index(
        "SyphonMetalServer.publish_frame_texture"
    )
    assert syphon_world.copied_images == [{"shape": (16, 32, 4), "contiguous": True}]
    assert syphon_world.published == [{"width": 32, "height": 16, "flipped": False}]
    assert list_senders(0.1) == ["SD Out"]

    src = SyphonSource(SyphonSourceConfig(name="SD Out"))
    src.open()
    frame = src.read(0.2)
    assert frame is not None and frame.fmt is PixelFormat.RGBA
    np.testing.assert_array_equal(frame.data[..., :3], rgb)
    assert (frame.data[..., 3] == 255).all()
    src.close()

    sink.close()
    assert "SyphonMetalServer.stop" in [m for m, _ in syphon_world.calls]
    assert list_senders(0.1) == []


def test_sink_recreates_texture_on_resize(syphon_world: SyphonWorld) -> None:
    sink = SyphonSink(SyphonSinkConfig(name="SD Out", flip=True))
    sink.open(8, 8, 30.0)
    sink.send(np.zeros((8, 8, 3), np.uint8))
    sink.send(np.zeros((20, 10, 3), np.uint8))
    assert [m for m, _ in syphon_world.calls].count("raw.create_mtl_texture") == 2
    assert syphon_world.published[-1] == {"width": 10, "height": 20, "flipped": True}
    sink.close()
