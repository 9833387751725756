"""What the control page's live views cost: CPU of the one thread that writes every event stream.

Opens the status page's server with the control page on (no model: the API's callables are
stand-ins), connects ``--viewers`` event streams that read like browsers, and publishes
``--rate`` parameter changes a second (what a VJ dragging faders and an OSC controller send, after
the daemon's coalescing) for ``--seconds``, on top of the twice-a-second figures. Prints the CPU
the events thread used (Linux: from /proc, so it holds on a busy machine) as a share of one core,
the events each viewer received, and the viewers dropped for not keeping up (should be 0).

Usage: python bench/control_page.py [--viewers 8] [--rate 100] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.control.surface import ControlSurface
from bridge.params import default_values
from bridge.status_page import StatusPage
from bridge.web.api import ControlApi


def thread_cpu_s(name: str) -> float:
    tid = next(t.native_id for t in threading.enumerate() if t.name == name)
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Viewer(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        self.events = 0

    def run(self) -> None:
        tail = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            tail += data
            self.events += tail.count(b"\n\n")
            tail = tail[tail.rfind(b"\n\n") + 2:] if b"\n\n" in tail else tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=8)
    parser.add_argument("--rate", type=float, default=100.0, help="parameter changes per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    values = default_values()
    api = ControlApi(ControlSurface(), lambda batch: None, values=lambda: dict(values), presets=list,
                     status=lambda: {"fps": 30.0, "fps_processed": 30.0, "latency_ms": 40.0, "dropped": 0})
    page = StatusPage("127.0.0.1", 0, dict, lambda which: None, control=api, max_streams=args.viewers)
    page.start()
    assert page.live is not None and page.events is not None
    try:
        viewers = [Viewer(page.address[1]) for _ in range(args.viewers)]
        for v in viewers:
            v.start()
        time.sleep(1.0)
        cpu0, t0, n = thread_cpu_s("status-page-events"), time.monotonic(), 0
        while time.monotonic() - t0 < args.seconds:
            values["strength"] = (n % 100) / 100
            page.live.publish({"strength": values["strength"]}, {}, [])
            n += 1
            time.sleep(max(0.0, t0 + n / args.rate - time.monotonic()))
        elapsed = time.monotonic() - t0
        cpu = thread_cpu_s("status-page-events") - cpu0
        time.sleep(0.5)
        got = [v.events for v in viewers]
        print(f"{args.viewers} viewers, {n / elapsed:.0f} changes/s for {elapsed:.1f} s: events thread "
              f"{100 * cpu / elapsed:.1f} % of one core; events per viewer {min(got)}..{max(got)} "
              f"(sent {n} changes + figures); viewers dropped for not keeping up: {page.events.dropped_slow}")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"load average while measuring: {load:.1f}")
        for v in viewers:
            v.sock.close()
    finally:
        page.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
