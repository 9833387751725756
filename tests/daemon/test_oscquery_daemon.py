"""OSCQuery and mDNS announcements of a running daemon: real HTTP, real UDP, real multicast DNS
on loopback."""

from __future__ import annotations

import http.client
import json
import os
import socket

import pytest

from bridge.control.codec import encode_message
from bridge.daemon import Daemon, DaemonOptions, StartupError
from tests.daemon.conftest import daemon_config, wait_until

NAME = f"SB-test-{os.getpid()}"


def _get(port: int, path: str) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        return r.status, json.loads(body) if r.getheader("Content-Type") == "application/json" else body
    finally:
        conn.close()


@pytest.fixture(scope="module")
def qdaemon(tiny_model_dir, preset_dir, feedback):
    cfg = daemon_config(tiny_model_dir, preset_dir, feedback.port,
                        **{"osc.query_port": 0, "osc.advertise": True, "osc.name": NAME,
                           "osc.allow": ["127.0.0.0/8"]})
    d = Daemon(cfg, DaemonOptions(prewarm_timeout=30))
    d.start()
    assert wait_until(lambda: d.frames_rendered > 2, 20)
    yield d
    d.stop()


def test_host_info_points_at_the_osc_port(qdaemon):
    code, info = _get(qdaemon.oscquery.address[1], "/?HOST_INFO")
    assert code == 200 and info["NAME"] == NAME and info["OSC_TRANSPORT"] == "UDP"
    assert info["OSC_PORT"] == qdaemon.osc.address[1] and info["OSC_IP"] == "127.0.0.1"


def test_values_follow_what_osc_changed(qdaemon):
    port = qdaemon.oscquery.address[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(encode_message("/sd/guidance", 2.75), qdaemon.osc.address)
        s.sendto(encode_message("/sd/prompt", "a quiet harbour"), qdaemon.osc.address)
    assert wait_until(lambda: _get(port, "/sd/guidance?VALUE")[1] == {"VALUE": [2.75]}, 5)
    # two datagrams may land in two receive slices, so on two frames: wait for the second too
    assert wait_until(lambda: _get(port, "/sd/prompt?VALUE")[1] == {"VALUE": ["a quiet harbour"]}, 5)
    code, node = _get(port, "/sd/prompt")
    assert code == 200 and node["VALUE"] == ["a quiet harbour"] and "mix" in node["CONTENTS"]
    code, preset = _get(port, "/sd/preset?RANGE")
    assert code == 200 and "neon-city" in preset["RANGE"][0]["VALS"]  # the shipped presets
    code, status = _get(port, "/sd/status/source?VALUE")
    assert code == 200 and status == {"VALUE": ["live"]}


def test_errors_follow_the_proposal(qdaemon):
    port = qdaemon.oscquery.address[1]
    assert _get(port, "/sd/nope")[0] == 404
    assert _get(port, "/sd/guidance?BOGUS")[0] == 400
    assert _get(port, "/sd/preset?VALUE")[0] == 204  # write-only: no value to give
    code, root = _get(port, "/")
    assert code == 200 and root["FULL_PATH"] == "/" and "sd" in root["CONTENTS"]


def test_http_side_obeys_osc_allow_and_checks_the_host(qdaemon):
    server = qdaemon.oscquery
    port = server.address[1]
    assert server.peer_allowed(("127.0.0.1", 50000)) and not server.peer_allowed(("192.168.1.7", 50000))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:  # a page on another domain that resolves to this machine (DNS rebinding) is refused
        conn.putrequest("GET", "/?HOST_INFO", skip_host=True)
        conn.putheader("Host", f"rebind.attacker.example:{port}")
        conn.endheaders()
        assert conn.getresponse().status == 421
    finally:
        conn.close()
    assert server.counts["bad_host"] >= 1 and _get(port, "/?HOST_INFO")[0] == 200


def test_osc_and_oscquery_are_announced_over_mdns(qdaemon):
    from zeroconf import IPVersion, Zeroconf

    assert qdaemon.advertiser.wait(10), "nothing was announced"
    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        query = zc.get_service_info("_oscjson._tcp.local.", f"{NAME}._oscjson._tcp.local.", timeout=4000)
        osc = zc.get_service_info("_osc._udp.local.", f"{NAME}._osc._udp.local.", timeout=4000)
    finally:
        zc.close()
    assert query is not None and query.port == qdaemon.oscquery.address[1]
    assert osc is not None and osc.port == qdaemon.osc.address[1] and "127.0.0.1" in osc.parsed_addresses()


def test_busy_query_port_is_a_start_up_error(tiny_model_dir, preset_dir, feedback):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        d = Daemon(daemon_config(tiny_model_dir, preset_dir, feedback.port, **{"osc.query_port": port}),
                   DaemonOptions(presets=False))
        with pytest.raises(StartupError, match=f"osc.query_port: cannot listen on 127.0.0.1:{port}"):
            d.start()
        d.stop()
