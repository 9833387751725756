"""The OSCQuery description must say exactly what the control surface accepts."""

from __future__ import annotations

import json
import math

import pytest

from bridge.control.codec import Impulse, encode_message
from bridge.control.oscquery import ACCESS_READ, ACCESS_RW, ACCESS_WRITE, find, host_info, namespace
from bridge.control.surface import ControlSurface, Rejected
from bridge.params import PARAMS, default_values

PRESETS = ["ink-wash", "neon-city"]


@pytest.fixture
def surface():
    return ControlSurface({"guidance": (1.0, 3.0)})


@pytest.fixture
def tree(surface):
    values = {**default_values(), "guidance": 2.5, "prompt": "a forest"}
    return namespace(surface, values, PRESETS, {"fps": 29.9, "source": "live", "dropped": 3})


def _leaves(node):
    if "TYPE" in node:
        yield node
    for child in node.get("CONTENTS", {}).values():
        yield from _leaves(child)


def _send(surface, address, tag, value):
    """Through the real wire format: encode as the described type, decode, validate."""
    arg = Impulse() if tag == "I" else {"f": float, "i": int, "s": str, "T": bool}[tag](value)
    return surface.process(encode_message(address, arg))


def test_every_accepted_address_is_described(surface, tree):
    described = {n["FULL_PATH"] for n in _leaves(tree) if n["ACCESS"] & ACCESS_WRITE}
    assert described == set(surface.addresses)
    for address in surface.addresses:
        node = find(tree, address)
        assert node["FULL_PATH"] == address and node["TYPE"] and node["DESCRIPTION"]


def test_values_ranges_and_types(tree):
    g = find(tree, "/sd/guidance")
    assert g["TYPE"] == "f" and g["ACCESS"] == ACCESS_RW and g["VALUE"] == [2.5]
    assert g["RANGE"] == [{"MIN": PARAMS["guidance"].lo, "MAX": PARAMS["guidance"].hi}]
    assert find(tree, "/sd/norm/guidance")["VALUE"] == [0.75]  # 2.5 in the configured 1..3
    assert find(tree, "/sd/seed")["TYPE"] == "i" and find(tree, "/sd/bypass")["TYPE"] == "T"
    prompt = find(tree, "/sd/prompt")
    assert prompt["VALUE"] == ["a forest"] and set(prompt["CONTENTS"]) == {"a", "b", "mix"}  # method and container
    assert find(tree, "/sd/preset")["RANGE"] == [{"VALS": PRESETS}]
    assert find(tree, "/sd/preset/next") == {"FULL_PATH": "/sd/preset/next", "ACCESS": ACCESS_WRITE, "TYPE": "I",
                                             "DESCRIPTION": find(tree, "/sd/preset/next")["DESCRIPTION"]}
    fps = find(tree, "/sd/status/fps")
    assert fps["ACCESS"] == ACCESS_READ and fps["VALUE"] == [29.9] and find(tree, "/sd/status/source")["TYPE"] == "s"
    assert find(tree, "/sd/nope") is None and find(tree, "/")["FULL_PATH"] == "/"


def test_what_is_described_is_what_the_surface_accepts(surface, tree):
    """Each writable leaf: its current value, its range ends and its listed choices are accepted;
    one step past a range end is rejected (nothing is clamped)."""
    for node in _leaves(tree):
        if not node["ACCESS"] & ACCESS_WRITE:
            continue
        address, tag = node["FULL_PATH"], node["TYPE"]
        samples = []
        if "VALUE" in node:
            samples.append(node["VALUE"][0])
        for r in node.get("RANGE", []):
            samples += [r[k] for k in ("MIN", "MAX") if k in r] + list(r.get("VALS", []))
        if tag == "I":
            samples.append(None)
        if tag == "s" and not samples:
            samples.append("my-look")
        assert samples, address
        for v in samples:
            result = _send(surface, address, tag, v)
            assert not isinstance(result, Rejected), (address, v, result)
        for r in node.get("RANGE", []):
            if "MAX" in r and math.isfinite(r["MAX"]):
                too_big = r["MAX"] + (1 if tag == "i" else 0.01)
                assert isinstance(_send(surface, address, tag, too_big), Rejected), (address, too_big)


def test_oscquery_needs_osc_on():
    from pydantic import ValidationError

    from bridge.config import DaemonConfig

    with pytest.raises(ValidationError, match="osc.enabled is false"):
        DaemonConfig.model_validate({"osc": {"enabled": False, "query_port": 9402}})
    assert DaemonConfig.model_validate({"osc": {"query_port": 9402}}).osc.query_port == 9402


def test_host_info():
    info = host_info("StreamBridge", "0.0.0.0", 9400)
    assert info["OSC_PORT"] == 9400 and info["OSC_TRANSPORT"] == "UDP" and "OSC_IP" not in info
    assert info["EXTENSIONS"]["VALUE"] and not info["EXTENSIONS"]["LISTEN"]
    assert host_info("x", "192.168.1.20", 1)["OSC_IP"] == "192.168.1.20"


def test_announced_addresses(monkeypatch):
    import types

    from bridge.control.oscquery import announce_addresses

    assert announce_addresses("192.168.1.20") == ["192.168.1.20"]
    ip = types.SimpleNamespace
    adapters = [ip(ips=[ip(ip="127.0.0.1")]), ip(ips=[ip(ip="10.0.0.5"), ip(ip=("fe80::1", 0, 2))]),
                ip(ips=[ip(ip="169.254.3.3")]), ip(ips=[ip(ip="192.168.1.20")])]
    monkeypatch.setattr("ifaddr.get_adapters", lambda: adapters)
    assert announce_addresses("0.0.0.0") == ["10.0.0.5", "192.168.1.20"]  # no loopback, link-local, IPv6
    monkeypatch.setattr("ifaddr.get_adapters", lambda: adapters[:1])
    assert announce_addresses("") == ["127.0.0.1"]  # only loopback: better than nothing


def test_any_request_gets_a_proper_answer(surface):
    """Fuzzed paths and queries: every answer is a defined status, never an exception (a 500)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from bridge.control.oscquery import OscQueryServer
    from bridge.params import default_values

    server = OscQueryServer("127.0.0.1", 0, name="t", osc_address=("127.0.0.1", 9400), surface=surface,
                            values=default_values, presets=lambda: PRESETS, status=lambda: {"fps": 1.0})
    try:
        parts = st.sampled_from(["sd", "norm", "prompt", "seed", "mix", "status", "..", "", "%2F", "ü", "a" * 300])
        paths = st.lists(parts, max_size=6).map(lambda p: "/" + "/".join(p)) | st.text(max_size=200)
        queries = st.sampled_from(["", "VALUE", "RANGE", "TYPE", "HOST_INFO", "CONTENTS", "LISTEN", "x=1"]) | st.text(
            max_size=50)

        @settings(max_examples=400, deadline=None)
        @given(paths, queries)
        def check(path, query):
            r = server.route(path, query)
            assert r.code in (200, 204, 400, 404)
            if r.code == 200:
                json.loads(r.body)

        check()
    finally:
        server.stop()  # never started: just closes the socket


def test_a_host_name_is_announced_as_its_address():
    from bridge.control.oscquery import announce_addresses

    assert announce_addresses("localhost") == ["127.0.0.1"]
