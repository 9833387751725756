"""The status page of a running daemon, over real HTTP on loopback."""

from __future__ import annotations

import http.client
import json
import socket
import threading

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from bridge import status_page
from bridge.config import DaemonConfig
from bridge.daemon import Daemon, DaemonOptions, StartupError
from bridge.status_page import StatusPage, encode_preview
from tests.daemon.conftest import daemon_config, wait_until


def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def daemon(tiny_model_dir, preset_dir, feedback):
    cfg = daemon_config(tiny_model_dir, preset_dir, feedback.port, **{"status.listen": "127.0.0.1:0"})
    d = Daemon(cfg, DaemonOptions(osc=False, presets=False))
    d.start()
    assert wait_until(lambda: d.publisher.showing == "frame" and d._preview_in is not None, 10)
    yield d
    d.stop()


def test_page_and_figures(daemon):
    port = daemon.status_page.address[1]
    assert daemon.status_page.url == f"http://127.0.0.1:{port}/"
    code, headers, body = _get(port, "/")
    assert code == 200 and headers["content-type"].startswith("text/html")
    assert b"StreamBridge" in body and b'src="/static/status.js"' in body
    assert "script-src 'self'" in headers["content-security-policy"]  # no inline script, nothing from elsewhere
    code, headers, script = _get(port, "/static/status.js")
    assert code == 200 and headers["content-type"].startswith("text/javascript")
    assert b"/status.json" in script and b"refreshImage('output')" in script
    assert b"Processed fps" in script  # the figures have readable names and explanations
    code, headers, body = _get(port, "/status.json?x=1")
    status = json.loads(body)
    assert code == 200 and headers["cache-control"] == "no-store"
    assert status["source"] == "live" and status["showing"] == "frame" and status["output_fps_target"] == 30.0
    assert status["sinks"][0]["sends"] > 0 and status["frames_rendered"] > 0
    assert status["params"]["prompt"] == daemon.controller.values["prompt"]  # the live values too
    assert set(daemon.status()) <= set(status)


@pytest.mark.parametrize("which", ["input", "output"])
def test_previews_are_the_current_frames(daemon, which):
    port = daemon.status_page.address[1]
    code, headers, body = _get(port, f"/{which}.jpg")
    assert code == 200 and headers["content-type"] == "image/jpeg"
    got = cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    ref = daemon._preview_in if which == "input" else daemon.publisher.last_frame
    assert got.shape == ref.shape  # 80x64 pattern / 64x64 output: small enough to keep their size
    # the frame moves on between the request and this read: compare loosely, against a flat grey
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < np.abs(ref.astype(int) - 128).mean()


def test_other_methods_and_paths_change_nothing(daemon):
    port = daemon.status_page.address[1]
    assert _get(port, "/status.json", "POST")[0] == 405
    assert _get(port, "/../etc/passwd")[0] == 404
    code, headers, body = _get(port, "/status.json", "HEAD")
    assert code == 200 and body == b"" and int(headers["content-length"]) > 10


def test_a_failing_request_is_a_500_and_the_show_goes_on(daemon, monkeypatch, caplog):
    port = daemon.status_page.address[1]
    published = daemon.metrics.counter("published")
    monkeypatch.setattr(daemon.status_page, "status", lambda: 1 / 0)
    with caplog.at_level("WARNING", logger="bridge.httpserver"):
        assert _get(port, "/status.json")[0] == 500
    assert "ZeroDivisionError" in caplog.text
    monkeypatch.undo()
    assert _get(port, "/status.json")[0] == 200
    assert wait_until(lambda: daemon.metrics.counter("published") > published + 3, 3)


def test_busy_port_is_a_start_up_error(tiny_model_dir, preset_dir, feedback):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = daemon_config(tiny_model_dir, preset_dir, feedback.port, **{"status.listen": f"127.0.0.1:{port}"})
        d = Daemon(cfg, DaemonOptions(osc=False, presets=False))
        with pytest.raises(StartupError, match=f"status.listen: cannot listen on 127.0.0.1:{port}"):
            d.start()
        d.stop()


def test_listen_is_validated(tiny_model_dir, preset_dir, feedback):
    base = daemon_config(tiny_model_dir, preset_dir, feedback.port).model_dump()
    assert base["status"]["listen"] is None  # off unless asked for
    for bad in ("9480", "localhost:", ":9480", "localhost:99999"):
        base["status"]["listen"] = bad
        with pytest.raises(ValidationError, match="HOST:PORT"):
            DaemonConfig.model_validate(base)


def test_encode_preview_scales_down_and_checks_its_input():
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[:, 640:] = (255, 0, 0)
    img = cv2.imdecode(np.frombuffer(encode_preview(frame), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (216, 384, 3)
    assert img[100, 300, 2] > 200 and img[100, 300, 0] < 50  # red stays red (BGR on decode)
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        encode_preview(np.zeros((4, 4), np.uint8))


def test_previews_are_encoded_once_per_frame_whatever_the_number_of_clients(monkeypatch):
    encoded = []
    real = status_page.encode_preview
    monkeypatch.setattr(status_page, "encode_preview", lambda f: (encoded.append(f.shape), real(f))[1])
    frames = {"output": np.full((48, 64, 3), 90, np.uint8)}
    page = StatusPage("127.0.0.1", 0, dict, frames.get)
    page.start()
    port = page.address[1]

    def poll(results: list) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for _ in range(5):
            conn.request("GET", "/output.jpg")
            r = conn.getresponse()
            results.append((r.status, r.read()))
        conn.close()

    def eight_clients() -> list:
        results: list = []
        threads = [threading.Thread(target=poll, args=(results,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        return results

    try:
        first = eight_clients()
        assert len(first) == 40 and {r for r in first} == {(200, first[0][1])}
        assert len(encoded) == 1 and page.encodes == 1  # 8 clients x 5 polls, one frame: one JPEG
        frames["output"] = frames["output"].copy()  # a new frame (same pixels): encoded again, once
        assert len(eight_clients()) == 40 and len(encoded) == 2
        assert _get(port, "/input.jpg")[0] == 503 and len(encoded) == 2
    finally:
        page.stop()


def test_allow_list_and_host_check_guard_the_page(tiny_model_dir, preset_dir, feedback):
    cfg = daemon_config(tiny_model_dir, preset_dir, feedback.port,
                        **{"status.listen": "127.0.0.1:0", "osc.allow": ["192.168.1.0/24"]})
    d = Daemon(cfg, DaemonOptions(osc=False, presets=False))
    d._build_status_page()  # the page alone: the wiring of osc.allow is what is under test
    try:
        port = d.status_page.address[1]
        assert _get(port, "/status.json")[0] == 403 and d.status_page.counts["forbidden"] == 1
        assert d.status_page.host_ok(f"localhost:{port}") and not d.status_page.host_ok(f"rebind.example:{port}")
    finally:
        d.status_page.stop()


def test_a_thousand_idle_connections_leave_the_page_and_the_show_running(daemon):
    from tests.daemon.test_httpserver import _fd_room, _idle_connections

    page = daemon.status_page
    port = page.address[1]
    n = _fd_room(1000)
    threads = threading.active_count()
    socks = _idle_connections(port, n)
    try:
        published, rendered = daemon.metrics.counter("published"), daemon.frames_rendered
        code, _, body = _get(port, "/status.json")
        assert code == 200 and json.loads(body)["source"] == "live"
        assert page.open_connections <= page.max_connections == 64
        assert threading.active_count() <= threads + 1  # no thread per connection (+1: a sink may reopen)
        assert wait_until(lambda: daemon.metrics.counter("published") > published + 3, 3)
        assert wait_until(lambda: daemon.frames_rendered > rendered + 2, 5)
    finally:
        for s in socks:
            s.close()
