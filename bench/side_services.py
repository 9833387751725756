"""Render rate while the status page is hammered (idle connections, clients polling previews).

Runs the real daemon in-process (tiny model, pattern source, status page on loopback) and counts
frames rendered in each phase of one run, interleaved: nothing; 1,000 idle connections held open;
8 clients (threads of another process, like browsers) polling ``/output.jpg`` and ``/input.jpg``
back to back (``--interval`` to pause between polls); the same 8 clients with the
preview cache bypassed (one JPEG encode per request, how the page worked before the cache); and
while 1,000 idle connections are open, how long a status request takes. Prints frames/s per phase
and its ratio to the quiet phases, the CPU seconds the status page's own threads used (Linux: from
/proc, so it does not depend on what else runs on the machine), the JPEGs encoded and the requests
answered.

Usage: python bench/side_services.py [--seconds 5] [--size 256] [--fps 30] [--rounds 2] [--interval 0]
"""

from __future__ import annotations

import argparse
import http.client
import logging
import multiprocessing
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bridge import status_page
from bridge.config import DaemonConfig
from bridge.daemon import Daemon, DaemonOptions
from stream_core.tiny import make_tiny_model


def page_cpu_s(label: str = "status-page") -> float:
    """CPU seconds used so far by the threads whose name starts with ``label`` (Linux), or nan."""
    total = 0.0
    for t in threading.enumerate():
        if not t.name.startswith(label) or t.native_id is None:
            continue
        try:
            with open(f"/proc/self/task/{t.native_id}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rendered_per_s(d: Daemon, seconds: float) -> float:
    n0, t0 = d.frames_rendered, time.perf_counter()
    time.sleep(seconds)
    return (d.frames_rendered - n0) / (time.perf_counter() - t0)


def idle_phase(d: Daemon, port: int, seconds: float, n: int) -> tuple[float, float]:
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            socks.append(s)
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/status.json")
        ok = conn.getresponse().status == 200
        conn.close()
        answer_s = time.perf_counter() - t0 if ok else float("nan")
        return rendered_per_s(d, seconds), answer_s
    finally:
        for s in socks:
            s.close()


def _poll_clients(port: int, clients: int, seconds: float, interval: float, out: Any) -> None:
    """In a separate process (like browsers): ``clients`` threads polling both previews."""
    stop = time.monotonic() + seconds
    served = [0] * clients

    def poll(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < stop:
            for path in ("/output.jpg", "/input.jpg"):
                conn.request("GET", path)
                conn.getresponse().read()
                served[k] += 1
            if interval > 0:
                time.sleep(interval)
        conn.close()

    threads = [threading.Thread(target=poll, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(sum(served))


def polling_phase(d: Daemon, port: int, seconds: float, clients: int, interval: float) -> tuple[float, int]:
    out: Any = multiprocessing.Queue()
    proc = multiprocessing.Process(target=_poll_clients, args=(port, clients, seconds + 0.5, interval, out))
    proc.start()
    try:
        time.sleep(0.25)
        rate = rendered_per_s(d, seconds)
        return rate, int(out.get(timeout=60))
    finally:
        proc.join(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--interval", type=float, default=0.0,
                    help="pause between a client's polls (the page itself uses 0.25 s); 0: back to back")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.idle + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.idle + 256), hard))
    model = Path(tempfile.gettempdir()) / "streambridge-bench-tiny"
    if not (model / "model_index.json").exists():
        make_tiny_model(model)
    cfg = DaemonConfig.model_validate({
        "model": {"model": str(model), "device": "cpu"},
        "pipeline": {"size": [args.size, args.size], "steps": [32, 45]},
        "source": {"type": "pattern", "width": args.size, "height": args.size, "fps": args.fps},
        "sinks": [{"type": "null"}],
        "output": {"fps": args.fps},
        "osc": {"listen": "127.0.0.1:0"},
        "status": {"listen": "127.0.0.1:0"},
        "presets": {"folder": str(Path(__file__).resolve().parent.parent / "presets")},
    })
    d = Daemon(cfg, DaemonOptions(prewarm_timeout=60))
    d.start()
    page = d.status_page
    port = page.address[1]
    results: dict[str, list[float]] = {"quiet": [], "idle": [], "polling": [], "polling, no cache": []}
    cpu: dict[str, float] = dict.fromkeys(results, 0.0)
    answers: list[float] = []
    encodes: dict[str, int] = {"polling": 0, "polling, no cache": 0}
    served: dict[str, int] = {"polling": 0, "polling, no cache": 0}
    cached = page.preview_jpeg

    def uncached(which: str) -> bytes | None:
        frame = page.frame(which)
        return None if frame is None else status_page.encode_preview(frame)

    try:
        time.sleep(2.0)
        for _ in range(args.rounds):
            c = page_cpu_s()
            results["quiet"].append(rendered_per_s(d, args.seconds))
            cpu["quiet"] += page_cpu_s() - c
            c = page_cpu_s()
            rate, answer = idle_phase(d, port, args.seconds, args.idle)
            cpu["idle"] += page_cpu_s() - c
            results["idle"].append(rate)
            answers.append(answer)
            e0 = page.encodes
            c = page_cpu_s()
            rate, n = polling_phase(d, port, args.seconds, args.clients, args.interval)
            cpu["polling"] += page_cpu_s() - c
            results["polling"].append(rate)
            encodes["polling"] += page.encodes - e0
            served["polling"] += n
            real = status_page.encode_preview
            count = [0]

            def counting(frame, _real=real, _count=count):
                _count[0] += 1
                return _real(frame)

            status_page.encode_preview = counting
            page.preview_jpeg = uncached
            try:
                c = page_cpu_s()
                rate, n = polling_phase(d, port, args.seconds, args.clients, args.interval)
                cpu["polling, no cache"] += page_cpu_s() - c
            finally:
                page.preview_jpeg = cached
                status_page.encode_preview = real
            results["polling, no cache"].append(rate)
            encodes["polling, no cache"] += count[0]
            served["polling, no cache"] += n
        stats = page.stats()
    finally:
        d.stop()
    quiet = statistics.median(results["quiet"])
    print(f"# bench/side_services.py  {time.strftime('%Y-%m-%d')}  {args.size}px tiny model, source {args.fps:g} fps,"
          f" {args.rounds} rounds x {args.seconds:g} s per phase, {args.clients} clients polling every"
          f" {args.interval:g} s, {os.cpu_count()} CPUs")
    print(f"{'phase':<22} {'rendered/s':>11} {'vs quiet':>9} {'page CPU s/s':>13} {'JPEGs':>7} {'requests':>9}"
          f" {'CPU ms/request':>15}")
    for name, rates in results.items():
        med = statistics.median(rates)
        used = cpu[name] / (args.rounds * args.seconds)
        extra = (f" {encodes[name]:>7} {served[name]:>9} {1000 * cpu[name] / max(1, served[name]):>15.3f}"
                 if name in encodes else "")
        print(f"{name:<22} {med:>11.2f} {med / quiet:>9.2f} {used:>13.3f}{extra}")
    print(f"status request with {args.idle} idle connections open: "
          + ", ".join(f"{a * 1000:.0f} ms" for a in answers))
    print(f"server counters: {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
