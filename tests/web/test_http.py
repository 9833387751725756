"""The control page's HTTP side over real sockets on loopback, without a daemon: POST rules,
refusals, the allow list and Host check, body limits, and the server-sent-event streams."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from bridge.control.surface import ControlSurface, SetParams
from bridge.status_page import StatusPage
from bridge.web.api import ControlApi
from tests.daemon.conftest import wait_until
from tests.web.test_api import Recorder, events_of


def make_page(rec: Recorder | None = None, control: bool = True, **kw) -> StatusPage:
    rec = rec or Recorder()
    values = {"strength": 0.5}
    api = ControlApi(ControlSurface(), rec.submit, values=lambda: dict(values), presets=lambda: ["a"],
                     status=lambda: {"fps": 30.0, "preset": "a", "dropped": 0},
                     on_error=lambda address, reason: rec.errors.append((address, reason)))
    page = StatusPage("127.0.0.1", 0, lambda: {"fps": 30.0}, lambda which: None,
                      control=api if control else None, **kw)
    page.start()
    return page


@pytest.fixture
def pages():
    made: list[StatusPage] = []

    def make(*args, **kw) -> StatusPage:
        page = make_page(*args, **kw)
        made.append(page)
        return page

    yield make
    for page in made:
        page.stop()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            host: str | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest(method, path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{port}")
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


JSON = {"Content-Type": "application/json"}


def post_json(port: int, data, headers: dict | None = None, **kw) -> tuple[int, dict]:
    code, _, body = request(port, "POST", "/api/osc", json.dumps(data).encode(), {**JSON, **(headers or {})}, **kw)
    return code, json.loads(body) if body.startswith(b"{") else {"text": body.decode()}


def test_a_post_is_validated_and_submitted(pages):
    rec = Recorder()
    port = pages(rec).address[1]
    assert post_json(port, {"address": "/sd/strength", "args": [0.25]})[0] == 200
    assert rec.batches == [[SetParams({"strength": 0.25})]]
    code, answer = post_json(port, {"address": "/sd/strength", "args": [1.5]})
    assert code == 400 and answer["reason"] == "1.5 is outside 0..1" and len(rec.batches) == 1
    assert rec.errors == [("/sd/strength", "1.5 is outside 0..1")]


def test_only_this_pages_own_json_posts_are_taken(pages):
    rec = Recorder()
    port = pages(rec).address[1]
    change = {"address": "/sd/strength", "args": [0.3]}
    body = json.dumps(change).encode()
    # a plain HTML form from another site can only send these content types
    for ctype in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"):
        assert request(port, "POST", "/api/osc", body, {"Content-Type": ctype})[0] == 415
    assert post_json(port, change, {"Origin": "http://evil.example"})[0] == 403
    assert post_json(port, change, {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "cross-site"})[0] == 403
    assert rec.batches == []
    assert post_json(port, change, {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"})[0] == 200
    assert post_json(port, change, {"Origin": f"http://localhost:{port}"}, host=f"localhost:{port}")[0] == 200
    assert len(rec.batches) == 2


def test_host_check_and_allow_list_apply_to_the_control_page(pages):
    rec = Recorder()
    port = pages(rec).address[1]
    assert post_json(port, {"address": "/sd/strength", "args": [0.3]}, host=f"evil.example:{port}")[0] == 421
    assert request(port, "GET", "/api/events", host=f"evil.example:{port}")[0] == 421
    big = b'{"address": "/sd/prompt", "args": ["' + b"a" * 70_000 + b'"]}'
    assert request(port, "POST", "/api/osc", big, JSON, host=f"evil.example:{port}")[0] == 421  # before any body rule
    port = pages(rec, allow=["10.1.2.3"]).address[1]
    assert post_json(port, {"address": "/sd/strength", "args": [0.3]})[0] == 403
    assert request(port, "POST", "/api/osc", big, JSON)[0] == 403
    assert request(port, "GET", "/control")[0] == 403 and request(port, "GET", "/api/events")[0] == 403
    assert rec.batches == []


def test_off_by_default_the_control_page_does_not_exist(pages):
    port = pages(control=False).address[1]
    assert request(port, "GET", "/control")[0] == 404 and request(port, "GET", "/api/events")[0] == 404
    code, _, body = request(port, "POST", "/api/osc", b'{"address": "/sd/strength", "args": [0.3]}', JSON)
    assert code == 405
    assert json.loads(request(port, "GET", "/status.json")[2])["control_page"] is False


def test_pages_and_assets(pages):
    port = pages().address[1]
    code, headers, body = request(port, "GET", "/control")
    assert code == 200 and b'src="/static/control.js"' in body and "default-src 'none'" in headers["content-security-policy"]
    code, headers, body = request(port, "GET", "/static/control.js")
    assert code == 200 and headers["content-type"].startswith("text/javascript") and b"/api/osc" in body
    assert request(port, "GET", "/static/control.css")[0] == 200
    assert request(port, "GET", "/static/control.html")[0] == 404 and request(port, "GET", "/static/../x")[0] == 404
    state = json.loads(request(port, "GET", "/api/state")[2])
    assert state["values"] == {"strength": 0.5} and state["presets"] == ["a"] and state["history"] == []
    assert json.loads(request(port, "GET", "/status.json")[2])["control_page"] is True


def test_body_limits(pages):
    port = pages().address[1]
    big = b'{"address": "/sd/prompt", "args": ["' + b"a" * 70_000 + b'"]}'
    assert request(port, "POST", "/api/osc", big, JSON)[0] == 413
    raw = (f"POST /api/osc HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
           "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        assert s.recv(100).startswith(b"HTTP/1.1 411")


def test_a_slow_body_holds_no_worker_and_keep_alive_follows_a_post(pages):
    rec = Recorder()
    page = pages(rec, workers=1)
    port = page.address[1]
    body = b'{"address": "/sd/strength", "args": [0.75]}'
    head = (f"POST /api/osc HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
        slow.sendall(head + body[:10])
        time.sleep(0.2)
        # the one worker is free: the body is gathered by the I/O thread
        assert request(port, "GET", "/status.json")[0] == 200
        slow.sendall(body[10:])
        answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200") and b'"ok": true' in answer
        slow.sendall(head + body)  # the same connection again
        assert slow.recv(4096).startswith(b"HTTP/1.1 200")
    assert rec.batches == [[SetParams({"strength": 0.75})]] * 2


class EventReader:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        self.data = b""

    def read_until(self, needle: bytes, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.data and time.monotonic() < deadline:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.data += chunk
        assert needle in self.data, self.data[-300:]
        return self.data

    def close(self) -> None:
        self.sock.close()


def test_events_stream_hello_then_every_change(pages):
    page = pages()
    reader = EventReader(page.address[1])
    try:
        data = reader.read_until(b"event: hello")
        assert data.startswith(b"HTTP/1.1 200 OK") and b"Content-Type: text/event-stream" in data
        reader.read_until(b"\n\n", 5)
        page.live.publish({"strength": 0.9}, {}, [("/sd/preset", "no preset 'zz' (1 loaded)")])
        reader.read_until(b"event: sd_error")
        body = reader.data.split(b"\r\n\r\n", 1)[1]
        names = [e for e, _ in events_of(body)]
        assert names[0] == "hello" and "params" in names and "sd_error" in names
        assert ("params", {"strength": 0.9}) in events_of(body)
        reader.read_until(b"event: status", 3)  # figures twice a second
        assert page.open_connections == 1 and page.events.count == 1
    finally:
        reader.close()
    assert wait_until(lambda: page.events.count == 0 and page.open_connections == 0, 3)  # noticed and freed


def test_live_views_are_capped_and_a_slot_frees_when_one_closes(pages):
    page = pages(max_streams=2)
    port = page.address[1]
    threads = threading.active_count()
    readers = [EventReader(port), EventReader(port)]
    try:
        for r in readers:
            r.read_until(b"event: hello")
        assert threading.active_count() == threads  # no thread per viewer
        assert page.open_connections == 2  # streams count towards the connection cap
        code, _, body = request(port, "GET", "/api/events")
        assert code == 503 and b"2 live views" in body
        assert request(port, "GET", "/status.json")[0] == 200  # the rest of the page still answers
        readers.pop().close()
        assert wait_until(lambda: page.events.count == 1, 3)
        readers.append(EventReader(port))
        readers[-1].read_until(b"event: hello")
    finally:
        for r in readers:
            r.close()


def test_a_viewer_that_stops_reading_is_dropped_not_waited_for(pages):
    page = pages()
    port = page.address[1]
    stuck = socket.create_connection(("127.0.0.1", port), timeout=5)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    try:
        assert wait_until(lambda: page.events.count == 1, 3)
        blob = {"prompt": "x" * 1500}
        done = threading.Event()

        def flood() -> None:
            for _ in range(10_000):  # ~15 MB: more than the kernel buffers and the backlog limit
                page.live.publish(blob, {}, [])
            done.set()

        threading.Thread(target=flood, daemon=True).start()
        assert done.wait(5)
        assert wait_until(lambda: page.events.count == 0, 5) and page.events.dropped_slow == 1
    finally:
        stuck.close()
