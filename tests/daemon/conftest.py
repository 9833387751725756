"""A real daemon (tiny model, pattern source, real OSC over loopback UDP) for integration tests."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.config import DaemonConfig
from bridge.control.codec import decode_packet, iter_messages
from bridge.daemon import Daemon, DaemonOptions

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0, step: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class FeedbackListener:
    """A plain UDP socket that records every OSC message the daemon sends back."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.messages: list[tuple[float, str, tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, _ = self.sock.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            for msg in iter_messages(decode_packet(data)):
                with self._lock:
                    self.messages.append((time.monotonic(), msg.address, tuple(msg.args)))

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def values(self, address: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return [args for _, a, args in self.messages if a == address]

    def wait_for(self, address: str, predicate: Callable[[tuple[Any, ...]], bool] = lambda a: True,
                 timeout: float = 5.0) -> tuple[Any, ...]:
        found: list[tuple[Any, ...]] = []

        def check() -> bool:
            found[:] = [a for a in self.values(address) if predicate(a)]
            return bool(found)

        assert wait_until(check, timeout), f"no {address} feedback; got {sorted({a for _, a, _ in self.messages})}"
        return found[-1]

    def close(self) -> None:
        self._stop = True
        self._thread.join(1)
        self.sock.close()


def daemon_config(model_dir: Path, presets: Path, feedback_port: int, **overrides: Any) -> DaemonConfig:
    data: dict[str, Any] = {
        "model": {"model": str(model_dir), "device": "cpu"},
        "pipeline": {"size": [64, 64], "steps": [20, 32, 45], "cfg": "self"},
        "source": {"type": "pattern", "width": 80, "height": 64, "fps": 30},
        "sinks": [{"type": "null"}],
        "output": {"fps": 30},
        "osc": {"listen": "127.0.0.1:0", "feedback": [f"127.0.0.1:{feedback_port}"], "status_rate": 5},
        "presets": {"folder": str(presets)},
    }
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        data.setdefault(section, {})[field] = value
    return DaemonConfig.model_validate(data)


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("presets")
    for f in (REPO / "presets").glob("*.yaml"):
        shutil.copy(f, folder / f.name)
    (folder / "needs-rebuild.yaml").write_text("prompt: a forest\nsteps: 2\n")
    return folder


@pytest.fixture(scope="module")
def feedback():
    fb = FeedbackListener()
    yield fb
    fb.close()


@pytest.fixture(scope="module")
def daemon(tiny_model_dir, preset_dir, feedback):
    d = Daemon(daemon_config(tiny_model_dir, preset_dir, feedback.port), DaemonOptions(prewarm_timeout=30))
    d.start()
    assert wait_until(lambda: d.frames_rendered > 3, 20), "daemon renders no frames"
    yield d
    d.stop()
