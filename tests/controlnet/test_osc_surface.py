"""The per-ControlNet OSC addresses: validation, /sd/norm, feedback echo, OSCQuery, status paths."""

from __future__ import annotations

import pytest

from bridge.control.codec import encode_message
from bridge.control.feedback import FeedbackSender
from bridge.control.oscquery import find, namespace
from bridge.control.surface import ControlSurface, Rejected, SetParams
from bridge.params import live_params
from tests.control.conftest import Listener

TABLE = live_params(["depth", "canny"])


def surface(**ranges) -> ControlSurface:
    return ControlSurface(ranges, params=TABLE)


def one(s: ControlSurface, address: str, *args):
    out = s.process(encode_message(address, *args))
    if isinstance(out, Rejected):
        return out
    (cmd,) = out
    return cmd


def test_scale_enabled_and_canny_are_accepted() -> None:
    s = surface()
    assert one(s, "/sd/controlnet/0/scale", 0.75) == SetParams({"controlnet_0_scale": 0.75})
    assert one(s, "/sd/controlnet/1/scale", 2) == SetParams({"controlnet_1_scale": 2.0})
    assert one(s, "/sd/controlnet/1/enabled", 0) == SetParams({"controlnet_1_enabled": False})
    assert one(s, "/sd/controlnet/1/canny/low", 40.0) == SetParams({"controlnet_1_canny_low": 40.0})
    assert one(s, "/sd/controlnet/1/canny/high", 180) == SetParams({"controlnet_1_canny_high": 180.0})


@pytest.mark.parametrize(("address", "args", "words"), [
    ("/sd/controlnet/0/scale", (2.5,), "outside 0..2"),
    ("/sd/controlnet/0/scale", (-0.1,), "outside 0..2"),
    ("/sd/controlnet/0/scale", (float("nan"),), "finite"),
    ("/sd/controlnet/0/scale", ("loud",), "a number"),
    ("/sd/controlnet/0/enabled", (2,), "0/1"),
    ("/sd/controlnet/1/canny/low", (5000.0,), "outside 0..1000"),
    ("/sd/controlnet/2/scale", (1.0,), "no ControlNet '2' (configured: 0, 1)"),
    ("/sd/controlnet/x/scale", (1.0,), "no ControlNet 'x'"),
    ("/sd/norm/controlnet/7/scale", (0.5,), "no ControlNet '7'"),
    ("/sd/controlnet/0/canny/low", (10.0,), "ControlNet 0 has no canny thresholds"),
])
def test_bad_index_or_value_is_refused_with_a_reason(address: str, args: tuple, words: str) -> None:
    out = one(surface(), address, *args)
    assert isinstance(out, Rejected) and words in out.reason, out


def test_without_controlnets_the_addresses_say_so() -> None:
    out = one(ControlSurface(), "/sd/controlnet/0/scale", 1.0)
    assert isinstance(out, Rejected) and "no ControlNet is configured" in out.reason


def test_norm_maps_onto_the_range_and_config_ranges_apply() -> None:
    assert one(surface(), "/sd/norm/controlnet/0/scale", 0.25) == SetParams({"controlnet_0_scale": 0.5})
    assert one(surface(), "/sd/norm/controlnet/1/canny/high", 0.5) == SetParams({"controlnet_1_canny_high": 250.0})
    narrowed = surface(controlnet_0_scale=(0.0, 1.0))
    assert one(narrowed, "/sd/norm/controlnet/0/scale", 0.25) == SetParams({"controlnet_0_scale": 0.25})
    with pytest.raises(ValueError, match="controlnet_5_scale"):
        surface(controlnet_5_scale=(0.0, 1.0))


def test_feedback_echoes_on_the_controlnet_addresses(listener: Listener) -> None:
    fb = FeedbackSender([listener.target], params=TABLE, ranges={"controlnet_0_scale": (0.0, 1.0)})
    fb.send_params({"controlnet_0_scale": 0.5, "controlnet_1_enabled": False, "controlnet_1_canny_low": 50.0})
    fb.send_status({"control/0/state": "lost", "control/0/gain": 0.25})
    got = {m.address: m.params for m in listener.recv_all()}
    assert got["/sd/controlnet/0/scale"] == [0.5]
    assert got["/sd/norm/controlnet/0/scale"] == [0.5]
    assert got["/sd/controlnet/1/enabled"] == [0]
    assert got["/sd/norm/controlnet/1/canny/low"] == [pytest.approx(0.1)]
    assert got["/sd/status/control/0/state"] == ["lost"]
    assert got["/sd/status/control/0/gain"] == [0.25]
    assert fb.stats()["skipped"] == 0
    fb.send_status({"control//x": 1, "Control/0": 1})  # still refused: empty or upper-case parts
    assert fb.stats()["skipped"] == 2
    fb.close()


def test_oscquery_lists_the_controlnet_nodes() -> None:
    s = surface()
    values = {"controlnet_0_scale": 0.8, "controlnet_1_enabled": True, "controlnet_1_canny_low": 100.0}
    tree = namespace(s, values, [], {"control/0/state": "live"})
    node = find(tree, "/sd/controlnet/0/scale")
    assert node["TYPE"] == "f" and node["VALUE"] == [0.8] and node["RANGE"] == [{"MIN": 0.0, "MAX": 2.0}]
    assert find(tree, "/sd/norm/controlnet/0/scale")["VALUE"] == [pytest.approx(0.4)]
    assert find(tree, "/sd/controlnet/1/canny/high")["TYPE"] == "f"
    assert find(tree, "/sd/controlnet/0/canny") is None  # depth has no thresholds
    assert find(tree, "/sd/status/control/0/state")["VALUE"] == ["live"]
