"""The OSC receiver in a child process (:class:`IsolatedOscServer`): real child processes, real UDP.

What it shares with the thread receiver (decoding, validation, bundles, allow-list, counters, stop,
a port in use) runs in ``test_server_udp.py`` for both. Here: what only a child process has -- the
hand-over of every kind of command through the pipe, rejections reported once per slice with a
count of the rest, a child that dies during the show is replaced on the same port, a stop hands
over what was already in the socket buffer, a parent that dies takes its child with it, Ctrl-C
does not end the child, its log lines reach the daemon's logger, and it yields the CPU to the
render loop.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.control.codec import encode_bundle, encode_message
from bridge.control.feedback import FeedbackQueue
from bridge.control.isolated import CHILD_NICE, MAX_ERRORS_PER_SLICE, IsolatedOscServer
from bridge.control.surface import ControlSurface, SavePreset, SetParams
from bridge.params import live_params
from tests.control.conftest import wait_until

REPO = Path(__file__).resolve().parents[2]
# child processes are looked at through /proc and killed with SIGKILL
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, sends POSIX signals")


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[list[Any]] = []
        self.errors: list[tuple[str, str]] = []
        self.dropped: list[int] = []

    def on_batch(self, batch: list[Any]) -> None:
        with self.lock:
            self.batches.append(batch)

    def on_error(self, address: str, reason: str) -> None:
        with self.lock:
            self.errors.append((address, reason))

    def on_dropped(self, n: int) -> None:
        with self.lock:
            self.dropped.append(n)

    def commands(self) -> list[Any]:
        with self.lock:
            return [cmd for batch in self.batches for cmd in batch]


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def server(rec: Recorder):
    s = IsolatedOscServer("127.0.0.1", 0, rec.on_batch, rec.on_error, on_errors_dropped=rec.on_dropped)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def client():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield sock
    sock.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_every_kind_of_command_crosses_to_the_parent_as_the_surface_made_it(server, rec, client) -> None:
    surface = ControlSurface()
    packets = [
        encode_message("/sd/strength", 0.25),
        encode_message("/sd/preset", "neon-city", "bar"),
        encode_message("/sd/preset/next"),
        encode_message("/sd/preset/prev", 1),
        encode_message("/sd/preset/save", "late-set", 1),
        encode_message("/sd/state"),
        encode_message("/sd/tempo/downbeat"),
        encode_message("/sd/lfo/guidance/depth", 0.5),
        encode_message("/sd/prompt", "a neon harbour at night"),
    ]
    expected = []
    for data in packets:
        batch = surface.process(data)
        assert isinstance(batch, list), batch
        expected.extend(batch)
        client.sendto(data, server.address)
        time.sleep(0.002)
    assert wait_until(lambda: server.stats()["accepted"] == len(packets), 3.0), server.stats()
    got = rec.commands()  # the counters arrive after the batch they count
    # values of one slice may merge into one SetParams; merge the expected ones the same way
    assert [type(c) for c in got if not isinstance(c, SetParams)] == \
        [type(c) for c in expected if not isinstance(c, SetParams)]
    assert [c for c in got if not isinstance(c, SetParams)] == [c for c in expected if not isinstance(c, SetParams)]
    merged_got: dict[str, Any] = {}
    for c in got:
        if isinstance(c, SetParams):
            merged_got.update(c.values)
    assert merged_got == {"strength": 0.25, "lfo/guidance/depth": 0.5, "prompt": "a neon harbour at night"}


def test_the_child_validates_with_the_daemons_parameter_table_and_ranges(rec, client) -> None:
    """A ControlNet's knobs and a narrowed /sd/norm range exist in the child too."""
    surface = ControlSurface({"guidance": (1.0, 3.0)}, params=live_params(["canny"]))
    name = next(n for n in surface.params if n.startswith("controlnet"))
    s = IsolatedOscServer("127.0.0.1", 0, rec.on_batch, rec.on_error, surface=surface)
    s.start()
    try:
        client.sendto(encode_message("/sd/norm/guidance", 0.5), s.address)
        client.sendto(encode_message(surface.params[name].address, 0.5), s.address)
        assert wait_until(lambda: len(rec.commands()) >= 1, 3.0)
        assert wait_until(lambda: s.stats()["accepted"] == 2, 3.0), s.stats()
        values: dict[str, Any] = {}
        for c in rec.commands():
            values.update(c.values)
        assert values["guidance"] == pytest.approx(2.0)
        assert name in values
    finally:
        s.stop()


def test_rejections_reach_the_parent_once_per_slice_with_a_count_of_the_rest(server, rec, client) -> None:
    n = 60
    for i in range(n):
        client.sendto(encode_message("/sd/strength", 5.0 + i), server.address)
    assert wait_until(lambda: len(rec.errors) + sum(rec.dropped) >= n, 3.0)
    time.sleep(0.05)
    assert len(rec.errors) + sum(rec.dropped) == n
    assert server.stats()["rejected"] == n
    assert rec.errors[0] == ("/sd/strength", "5.0 is outside 0..1")
    # at most MAX_ERRORS_PER_SLICE reported per slice: fewer reports than rejections
    assert len(rec.errors) < n and sum(rec.dropped) > 0
    assert all(n_ <= n for n_ in rec.dropped)


def test_dropped_rejections_are_counted_by_the_feedback_queue() -> None:
    q = FeedbackQueue(max_errors=4)
    q.put(("error", ("/sd/strength", "too big")))
    q.put(("errors_dropped", 7))
    params, status, errors, dropped = q.take(0.1)
    assert errors == [("/sd/strength", "too big")] and dropped == 7
    assert q.dropped_total == 7


def test_a_child_that_dies_is_replaced_on_the_same_port(server, rec, client, caplog) -> None:
    port, first = server.port, server.pid
    assert first is not None and _alive(first)
    with caplog.at_level(logging.WARNING, logger="bridge.control.server"):
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: server.pid not in (None, first), 5.0)
        assert wait_until(lambda: server.stats()["restarts"] == 1, 5.0)
    assert server.port == port and server.running
    assert any("ended (exit code -9)" in r.getMessage() for r in caplog.records), caplog.text
    client.sendto(encode_message("/sd/seed", 4242), ("127.0.0.1", port))
    assert wait_until(lambda: SetParams({"seed": 4242}) in rec.commands(), 3.0)
    assert not _alive(first)


def test_stop_hands_over_what_already_reached_the_socket(rec, client) -> None:
    s = IsolatedOscServer("127.0.0.1", 0, rec.on_batch, rec.on_error)
    s.start()
    n = 200
    for i in range(n):
        client.sendto(encode_message("/sd/preset/save", f"look-{i}"), s.address)
    drops = s.kernel_drops() or 0
    s.stop()
    saves = [c for c in rec.commands() if isinstance(c, SavePreset)]
    assert len(saves) + drops == n
    assert [c.name for c in saves] == [f"look-{i}" for i in range(len(saves))]  # in order
    assert s.pid is None and not s.running


def test_stop_leaves_no_process_and_a_restart_works(rec, client) -> None:
    s = IsolatedOscServer("127.0.0.1", 0, rec.on_batch)
    s.start()
    pid = s.pid
    assert pid is not None
    s.stop()
    assert not _alive(pid)
    s.start()
    assert s.pid not in (None, pid)
    client.sendto(encode_message("/sd/delta", 0.5), s.address)
    assert wait_until(lambda: SetParams({"delta": 0.5}) in rec.commands(), 3.0)
    s.stop()


def test_signals_for_the_daemons_group_do_not_end_the_child(server, rec, client) -> None:
    pid = server.pid
    assert pid is not None
    # its own session: Ctrl-C, `timeout` or `kill -- -PGID` aimed at the daemon's group miss it...
    assert os.getsid(pid) == pid != os.getsid(0)
    # ...and a stray SIGINT or SIGTERM is ignored (the end of its stdin is what stops it)
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.2)
    assert _alive(pid) and server.stats()["restarts"] == 0
    client.sendto(encode_message("/sd/guidance", 1.5), server.address)
    assert wait_until(lambda: SetParams({"guidance": 1.5}) in rec.commands(), 3.0)


_PARENT = """
import os, sys, time
sys.path.insert(0, {repo!r})
from bridge.control.isolated import IsolatedOscServer
s = IsolatedOscServer("127.0.0.1", 0, lambda b: None)
s.start()
if {fork} and os.fork() == 0:  # a forked helper: it inherits the write end of the child's stdin
    time.sleep(30)
    os._exit(0)
print(s.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("fork", [False, True], ids=["parent-killed", "parent-killed-a-fork-holds-stdin"])
def test_the_child_dies_with_its_parent(tmp_path, fork: bool) -> None:
    """The daemon SIGKILLed: its receiver ends too (its stdin closes); and when a process the
    daemon forked without exec still holds that stdin open, the child notices its parent changed."""
    script = tmp_path / "parent.py"
    script.write_text(_PARENT.format(repo=str(REPO), fork=fork))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()
        parent.wait(5)
        assert wait_until(lambda: not _alive(child), 5.0), "the receiver outlived its daemon"
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)  # the forked helper too
        except ProcessLookupError:
            pass
        parent.wait(5)


def test_the_childs_log_lines_reach_the_parents_logger(rec, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="bridge.control.server"):
        s = IsolatedOscServer("127.0.0.1", 0, rec.on_batch)
        s.start()
        s.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.control.server"]
    assert f"OSC listening on 127.0.0.1:{s.port}" in " ".join(lines), lines


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX scheduling priority")
def test_the_child_yields_the_cpu_to_the_render_loop(server) -> None:
    assert server.pid is not None
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, server.pid) == min(mine + CHILD_NICE, 19)


def test_a_host_that_cannot_be_resolved_is_a_clear_error(rec) -> None:
    s = IsolatedOscServer("no-such-host.invalid", 0, rec.on_batch)
    with pytest.raises(OSError, match="cannot resolve OSC listen host"):
        s.start()
    assert not s.running and s.pid is None


def test_a_flood_is_received_or_counted_and_the_parent_gets_few_hand_overs(server, rec, client) -> None:
    """2,000 values arrive; the parent's thread is woken about once per receive slice, not once
    per datagram (the point of the child: the daemon's process does not pay per datagram)."""
    n = 2000
    packets = [encode_message("/sd/strength", i / n) for i in range(n)]
    for i, data in enumerate(packets):
        client.sendto(data, server.address)
        if i % 20 == 19:
            time.sleep(0.001)
    assert wait_until(lambda: server.stats()["accepted"] + (server.kernel_drops() or 0) >= n, 5.0), server.stats()
    assert server.stats()["rejected"] == 0 and rec.batches
    assert len(rec.batches) < n / 5, len(rec.batches)
    values = [c.values["strength"] for c in rec.commands()]
    assert values == sorted(values)  # latest wins, in arrival order


def test_bundles_cross_as_one_batch(server, rec, client) -> None:
    client.sendto(encode_bundle([encode_message("/sd/strength", 0.4), encode_message("/sd/preset", "x")]),
                  server.address)
    assert wait_until(lambda: len(rec.commands()) >= 2, 3.0)
    assert rec.batches[0][0] == SetParams({"strength": 0.4})
    assert MAX_ERRORS_PER_SLICE >= 1


def test_receiver_config_defaults_to_process_and_names_a_bad_value(tmp_path) -> None:
    from bridge.config import DaemonConfig, load_config
    from bridge.yamlio import ConfigError

    assert DaemonConfig().osc.receiver == "process"
    bad = tmp_path / "show.yaml"
    bad.write_text("osc:\n  listen: 127.0.0.1:9400\n  receiver: fork\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert f"{bad}:3: key 'osc.receiver'" in str(err.value) and "fork" in str(err.value)
    good = tmp_path / "good.yaml"
    good.write_text("osc:\n  receiver: thread\n")
    assert load_config(good).osc.receiver == "thread"


def test_pauses_between_restarts_grow_only_while_the_child_keeps_dying(rec, client, caplog, monkeypatch) -> None:
    import bridge.control.isolated as iso

    monkeypatch.setattr(iso, "STABLE_S", 0.3)
    s = IsolatedOscServer("127.0.0.1", 0, rec.on_batch)
    s.start()
    try:
        with caplog.at_level(logging.WARNING, logger="bridge.control.server"):
            for n in (1, 2):  # a child that ran longer than STABLE_S: the next restart is immediate
                time.sleep(0.4)
                pid = s.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                assert wait_until(lambda n=n: s.stats()["restarts"] == n and s.pid is not None, 5.0)
            monkeypatch.setattr(iso, "STABLE_S", 60.0)  # whatever the machine's load: "at once" now
            pid = s.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # dies again at once: a longer pause
            assert wait_until(lambda: s.stats()["restarts"] == 3, 5.0)
        pauses = [r.getMessage().rsplit(" in ", 1)[1] for r in caplog.records if "starting another" in r.getMessage()]
        assert pauses == ["0.1 s", "0.1 s", "0.5 s"], pauses
    finally:
        s.stop()


def test_counters_add_up_across_children_and_the_pid_follows_the_live_one(server, rec, client) -> None:
    for i in range(5):
        client.sendto(encode_message("/sd/seed", i), server.address)
    assert wait_until(lambda: server.stats()["accepted"] == 5, 3.0)
    first = server.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: server.stats()["restarts"] == 1 and server.pid is not None, 5.0)
    assert server.pid != first
    assert server.stats()["accepted"] == 5  # the dead child's count is kept, not reset
    client.sendto(encode_message("/sd/seed", 99), server.address)
    assert wait_until(lambda: server.stats()["accepted"] == 6, 3.0)
    server.stop()
    assert server.pid is None and server.stats()["accepted"] == 6


def test_the_child_imports_the_daemons_bridge_not_one_in_the_working_directory(rec, tmp_path, monkeypatch) -> None:
    shadow = tmp_path / "bridge"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('a bridge package from the working directory')\n")
    monkeypatch.chdir(tmp_path)
    s = IsolatedOscServer("127.0.0.1", 0, rec.on_batch)
    s.start()  # would fail to start if the child imported the shadow package
    try:
        assert s.pid is not None and _alive(s.pid)
    finally:
        s.stop()
