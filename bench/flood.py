"""What OSC traffic costs the render loop: a real daemon, real UDP, a flooder in its own process.

The daemon runs in this process exactly as ``streambridge run`` builds it: the tiny generated
model at 64x64, a pattern source fast enough (90 fps) that the render loop never waits for
input, so its processed frame rate is the render loop's capacity, a null sink. A separate
process sends pre-built OSC datagrams on a paced schedule (it shares the same CPUs, which is the
point). Phases, each measured as processed frames per second over the phase:

1. quiet baseline;
2. steady: 2,000 valid messages/s over 20 addresses (10 parameters and their /sd/norm forms),
   what a TouchDesigner CHOP sending 20 channels at 100 fps produces, and sent the way it sends
   them: a burst of 20 every 10 ms; goal: <= 10 % slower;
3. quiet baseline again;
4. flood: 20,000 packets/s for 5 s, half valid ``/sd/strength`` values, half invalid (garbage
   bytes, unknown addresses, out-of-range values); goal: >= 80 % of the baseline frame rate,
   the last valid value that arrived is the one applied;
5. right after the flood: ``/sd/strength 0.4242`` from a fresh socket; goal: applied < 100 ms;
6. paired rounds: the steady load and the flood again, 10 x (0.5 s on, 0.5 s off) interleaved,
   comparing the frame rate of the on and off slices (the machine's background load is then the
   same in both; `--rounds`, `--pulse`);
7. the daemon's share of the steady load: paired rounds again, but the off slices send the same
   traffic to a UDP socket nobody reads instead of pausing. The sender process then costs the
   machine the same in both halves (on 2 cores it takes most of the second one, pushing the
   daemon's other threads onto the render loop's core), so the ratio is what receiving, decoding,
   validating and applying the messages costs the render loop;
8. a control with no traffic at all: the same on/off rounds with a process that only spins on
   the CPU in the on slices, i.e. what another busy process costs the render loop on this machine
   (on a 2-core VM ~10 %: the continuous and paired steady figures include that much of the
   sender's own cost, which the daemon's-share measure cancels).

Ratios are measured within one run (baseline = mean of the quiet phases around each load), so
host noise between runs does not enter them. Also printed: CPU seconds per second used by the
OSC receive, render and feedback threads during each phase (from ``/proc/self/task``, Linux),
datagrams received, dropped by the kernel, coalesced and refused.

Usage: .venv/bin/python bench/flood.py [--seconds 5] [--strict]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------ the flooder
# Kept free of project imports so the flooder process starts in milliseconds.

def _osc_str(s: str) -> bytes:
    b = s.encode() + b"\x00"
    return b + b"\x00" * (-len(b) % 4)


def _osc_msg(address: str, tag: str, value: float | int) -> bytes:
    arg = struct.pack(">f", value) if tag == "f" else struct.pack(">i", value)
    return _osc_str(address) + _osc_str("," + tag) + arg


STEADY_ADDRESSES = [
    ("/sd/strength", 0.0, 1.0), ("/sd/guidance", 0.0, 5.0), ("/sd/delta", 0.0, 2.0),
    ("/sd/prompt/mix", 0.0, 1.0), ("/sd/seed/mix", 0.0, 1.0), ("/sd/mix", 0.5, 1.0),
    ("/sd/smoothing", 0.0, 0.9), ("/sd/transition", 0.0, 10.0), ("/sd/seed", 0, 9999), ("/sd/seed/b", 0, 9999),
]


# The steady load arrives as a controller sends it: one burst per controller frame (20 messages
# every 10 ms = a CHOP exporting 20 channels at 100 fps); the flood is paced every millisecond.
STEADY_BURST_HZ = 100.0


def _steady_packets(rng: random.Random) -> list[bytes]:
    out = []
    for i in range(4000):
        address, lo, hi = STEADY_ADDRESSES[i % len(STEADY_ADDRESSES)]
        norm = (i // len(STEADY_ADDRESSES)) % 2 == 1
        x = rng.random()
        if norm:
            address = "/sd/norm" + address[len("/sd"):]
            out.append(_osc_msg(address, "f", x))
        elif isinstance(lo, int):
            out.append(_osc_msg(address, "i", int(lo + (hi - lo) * x)))
        else:
            out.append(_osc_msg(address, "f", lo + (hi - lo) * x))
    return out


def _flood_packets(rng: random.Random) -> list[bytes]:
    invalid = [
        b"\x00garbage", b"#bundle\x00\x00", bytes(rng.randrange(256) for _ in range(40)),
        _osc_msg("/sd/strengthh", "f", 0.5), _osc_msg("/sd/strength", "f", 7.5),
        _osc_msg("/sd/*", "f", 0.5), _osc_msg("/composition/layers/1/opacity", "f", 0.2),
    ]
    out = []
    for i in range(4000):
        if i % 2 == 0:
            out.append(_osc_msg("/sd/strength", "f", round(0.1 + 0.8 * rng.random(), 4)))
        else:
            out.append(invalid[i % len(invalid)])
    return out


def flooder(host: str, port: int, rate: float, seconds: float, kind: str, pulse: float = 0.0,
            decoy_port: int = 0, burst_hz: float = 1000.0) -> None:
    """Send ``rate`` datagrams/s for ``seconds`` on an absolute schedule (1 ms chunks). With
    ``pulse`` > 0, send only in every other ``pulse``-second slice from the time.monotonic()
    instant the go line gives (on, off, on, ...), for paired on/off measurements; with a
    ``decoy_port`` too, the off slices send the same traffic to that port instead (a socket nobody
    reads): the sender then costs the machine the same in both halves."""
    rng = random.Random(7)
    packets = _steady_packets(rng) if kind == "steady" else _flood_packets(rng)
    burn = kind == "burn"  # no traffic at all: spin on the CPU in the on slices (a control)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    dest = (host, port)
    decoy = (host, decoy_port) if decoy_port else None
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    go = sys.stdin.readline().split()
    if pulse > 0:
        t0 = float(go[1])
        while time.monotonic() < t0:
            time.sleep(0.0005)
        start = time.perf_counter() - (time.monotonic() - t0)
    else:
        start = time.perf_counter()
    sent = 0
    i = 0
    n = len(packets)
    while True:
        now = time.perf_counter() - start
        if now >= seconds:
            break
        to = dest
        if pulse > 0:
            k, into = divmod(now, pulse)
            if decoy is not None:  # every slice sends; the odd ones to the decoy
                to = decoy if int(k) % 2 else dest
                due = int(now * rate) + 1
            elif int(k) % 2:  # an off slice: wait for the next on slice
                time.sleep(0.001)
                continue
            else:
                due = int((int(k) // 2 * pulse + into) * rate) + 1
        else:
            due = int(now * rate) + 1
        if burn:
            spin = time.perf_counter() + 0.001
            while time.perf_counter() < spin:
                pass
            continue
        while sent < due:
            try:
                sock.sendto(packets[i], to)
            except BlockingIOError:
                pass
            sent += 1
            i = (i + 1) % n
        time.sleep(1.0 / burst_hz)
    sys.stdout.write(f"sent {sent} {time.perf_counter() - start:.3f}\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------ measuring

def _thread_cpu(native_id: int | None) -> float | None:
    """CPU seconds (user + system) a thread of this process has used, from /proc (Linux)."""
    if native_id is None:
        return None
    try:
        with open(f"/proc/self/task/{native_id}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Phase:
    def __init__(self, daemon, threads: dict[str, threading.Thread]) -> None:
        self.daemon = daemon
        self.threads = threads

    def __enter__(self) -> Phase:
        self.t0 = time.perf_counter()
        self.f0 = self.daemon.frames_rendered
        self.cpu0 = {k: _thread_cpu(t.native_id) for k, t in self.threads.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.fps = (self.daemon.frames_rendered - self.f0) / self.seconds
        self.cpu = {}
        for k, t in self.threads.items():
            a, b = self.cpu0[k], _thread_cpu(t.native_id)
            self.cpu[k] = None if a is None or b is None else (b - a) / self.seconds

    def cpu_text(self) -> str:
        return ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in self.cpu.items())

    @property
    def render_ms(self) -> float | None:
        """Render-thread CPU per processed frame (independent of how much CPU other processes
        leave the daemon)."""
        cpu = self.cpu.get("render")
        return None if cpu is None or self.fps <= 0 else 1000 * cpu / self.fps


def _inbox_stats(daemon) -> dict[str, int]:
    inbox = getattr(daemon.controller, "inbox", None)  # absent before the bounded control path
    return inbox.stats() if inbox is not None else {}


def run_flooder(port: int, rate: float, seconds: float, kind: str, pulse: float = 0.0,
                decoy_port: int = 0) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, __file__, "--flooder", kind, str(port), str(rate), str(seconds), str(pulse), str(decoy_port),
         str(STEADY_BURST_HZ if kind == "steady" else 1000.0)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each load phase")
    ap.add_argument("--quiet", type=float, default=4.0, help="length of each baseline phase")
    ap.add_argument("--steady-rate", type=float, default=2000.0)
    ap.add_argument("--flood-rate", type=float, default=20000.0)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    ap.add_argument("--pulse", type=float, default=0.5, help="slice length of the paired on/off rounds")
    ap.add_argument("--rounds", type=int, default=10, help="paired on/off rounds per load")
    ap.add_argument("--flooder", nargs=7, metavar=("KIND", "PORT", "RATE", "SECONDS", "PULSE", "DECOY", "BURST_HZ"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flooder:
        kind, port, rate, seconds, pulse, decoy_port, burst_hz = args.flooder
        flooder("127.0.0.1", int(port), float(rate), float(seconds), kind, float(pulse), int(decoy_port),
                float(burst_hz))
        return 0

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from bridge.config import DaemonConfig
    from bridge.control.surface import SetParams
    from bridge.daemon import Daemon, DaemonOptions
    from stream_core.tiny import make_tiny_model

    torch.set_num_threads(1)  # one core for the render loop, one for everything else
    tmp = Path(tempfile.mkdtemp(prefix="flood-bench-"))
    model = make_tiny_model(tmp / "model")
    (tmp / "presets").mkdir()
    cfg = DaemonConfig.model_validate({
        "model": {"model": str(model), "device": "cpu", "dtype": "float32"},
        "pipeline": {"size": [64, 64], "steps": [32, 45], "cfg": "self"},
        "source": {"type": "pattern", "width": 64, "height": 64, "fps": 90},
        "sinks": [{"type": "null"}],
        "output": {"fps": 30},
        "osc": {"listen": "127.0.0.1:0", "feedback": ["127.0.0.1:9"], "status_rate": 2},
        "presets": {"folder": str(tmp / "presets")},
    })
    daemon = Daemon(cfg, DaemonOptions(prewarm_timeout=30))
    daemon.start()
    osc = daemon.osc
    port = osc.address[1]
    by_name = {t.name: t for t in threading.enumerate()}
    threads = {"osc-receive": by_name["osc-receive"], "render": by_name["render"], "feedback": by_name["feedback"]}

    # record the last valid strength that reached the inbox (the value that must win)
    last_accepted: list[float] = []
    real_submit = osc.on_batch

    def recording_submit(batch):
        for cmd in batch:
            if isinstance(cmd, SetParams) and "strength" in cmd.values:
                last_accepted.append(cmd.values["strength"])
        return real_submit(batch)

    osc.on_batch = recording_submit
    ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def reset() -> None:
        # mid-range values, so the quiet phases run the same per-frame work (dry/wet blend,
        # smoothing, seed crossfade) as the phases where faders move them: the comparison is
        # then the cost of the traffic, not of a blend being on or off
        for address, value in (("/sd/strength", 0.5), ("/sd/guidance", 1.2), ("/sd/delta", 1.0),
                               ("/sd/prompt/mix", 0.5), ("/sd/seed/mix", 0.5), ("/sd/mix", 0.75),
                               ("/sd/smoothing", 0.45), ("/sd/transition", 0.0)):
            ctl.sendto(_osc_msg(address, "f", value), ("127.0.0.1", port))
        ctl.sendto(_osc_msg("/sd/seed", "i", 2), ("127.0.0.1", port))
        time.sleep(0.3)

    def settle(timeout: float = 10.0) -> None:
        """Wait until the receiver has handled everything it will get."""
        last, stable = -1, 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and stable < 5:
            n = osc.stats()["received"]
            stable = stable + 1 if n == last else 0
            last = n
            time.sleep(0.02)

    def load_phase(kind: str, rate: float) -> tuple[Phase, int]:
        p = run_flooder(port, rate, args.seconds, kind)
        with Phase(daemon, threads) as ph:
            p.stdin.write("go\n")
            p.stdin.flush()
            out = p.stdout.readline()
        p.wait(10)
        return ph, int(out.split()[1])

    # a UDP socket nobody reads: the decoy the paired "daemon's share" rounds send to
    decoy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    decoy.bind(("127.0.0.1", 0))

    def paired(kind: str, rate: float, decoy_port: int = 0) -> float:
        """Frames rendered in the on slices over frames in the off slices, interleaved: the
        background load of the machine is the same in both halves. With ``decoy_port`` the off
        slices send the same traffic to a socket nobody reads, so the ratio is what handling the
        messages costs the daemon, without the sender's own CPU use (which the plain rounds
        include: on 2 cores the sender takes most of the second core)."""
        n = 2 * args.rounds
        p = run_flooder(port, rate, n * args.pulse, kind, args.pulse, decoy_port)
        t0 = time.monotonic() + 0.3
        p.stdin.write(f"go {t0!r}\n")
        p.stdin.flush()
        on = off = prev = 0
        for k in range(n + 1):
            while time.monotonic() < t0 + k * args.pulse:
                time.sleep(0.001)
            count = daemon.frames_rendered
            if k:
                if (k - 1) % 2 == 0:
                    on += count - prev
                else:
                    off += count - prev
            prev = count
        p.stdout.readline()
        p.wait(10)
        settle()
        return on / max(off, 1)

    def quiet_phase() -> Phase:
        with Phase(daemon, threads) as ph:
            time.sleep(args.quiet)
        return ph

    load0 = os.getloadavg()[0]
    time.sleep(3.0)  # warm up
    results: list[tuple[str, bool, str]] = []
    reset()
    base1 = quiet_phase()
    s0 = osc.stats()
    steady, steady_sent = load_phase("steady", args.steady_rate)
    settle()
    s1 = osc.stats()
    reset()
    base2 = quiet_phase()
    drops0 = osc.kernel_drops() or 0
    inbox0 = _inbox_stats(daemon)
    last_accepted.clear()
    flood, flood_sent = load_phase("flood", args.flood_rate)
    settle()
    s2 = osc.stats()
    drops1 = osc.kernel_drops() or 0
    time.sleep(0.2)  # a few ticks
    applied = daemon.controller.values["strength"]
    winner = last_accepted[-1] if last_accepted else None
    inbox1 = _inbox_stats(daemon)
    # a change right after the flood
    t_send = time.perf_counter()
    ctl.sendto(_osc_msg("/sd/strength", "f", 0.4242), ("127.0.0.1", port))
    while abs(daemon.controller.values["strength"] - 0.4242) > 1e-4 and time.perf_counter() - t_send < 5:
        time.sleep(0.0005)
    after_ms = 1000 * (time.perf_counter() - t_send)
    reset()
    base3 = quiet_phase()
    pulsed_steady = paired("steady", args.steady_rate)
    reset()
    share_steady = paired("steady", args.steady_rate, decoy.getsockname()[1])
    reset()
    pulsed_flood = paired("flood", args.flood_rate)
    burn_only = paired("burn", 0.0)
    daemon.stop()
    decoy.close()

    b_steady = (base1.fps + base2.fps) / 2
    b_flood = (base2.fps + base3.fps) / 2
    r_steady = steady.fps / b_steady
    r_flood = flood.fps / b_flood
    print(f"host: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"tiny model 64x64, 2 steps, pattern source at 90 fps, torch threads 1; load average at "
          f"start {load0:.1f}, end {os.getloadavg()[0]:.1f} (other processes skew the ratios)")
    print(f"baseline processed fps: {base1.fps:.1f} / {base2.fps:.1f} / {base3.fps:.1f}  "
          f"(thread CPU s/s: {base2.cpu_text()})")
    print(f"steady {args.steady_rate:.0f} msg/s over 20 addresses: sent {steady_sent}, received "
          f"{s1['received'] - s0['received']}, processed fps {steady.fps:.1f} = {r_steady:.2f} x baseline "
          f"(goal >= 0.90)  (thread CPU s/s: {steady.cpu_text()})")
    print(f"flood {args.flood_rate:.0f} pkt/s, half invalid: sent {flood_sent}, received "
          f"{s2['received'] - s1['received']}, kernel drops {drops1 - drops0}, processed fps {flood.fps:.1f} = "
          f"{r_flood:.2f} x baseline (goal >= 0.80)  (thread CPU s/s: {flood.cpu_text()})")
    if inbox1:
        print(f"  inbox during the flood: {inbox1['params'] - inbox0['params']} values received, "
              f"{inbox1['coalesced'] - inbox0['coalesced']} coalesced away before a tick; receiver "
              f"slices cut short by its duty limit {s2.get('throttled', 0) - s1.get('throttled', 0)} times")
    print(f"last valid value that arrived: {winner}, applied: {applied} -> "
          f"{'ok' if winner is not None and abs(applied - winner) < 1e-6 else 'MISMATCH'}")
    print(f"change sent after the flood applied in {after_ms:.1f} ms (goal < 100)")
    print(f"paired rounds ({args.rounds} x {args.pulse:.1f} s on / {args.pulse:.1f} s off, interleaved): "
          f"steady {pulsed_steady:.2f} x, flood {pulsed_flood:.2f} x the frame rate of the off slices")
    print(f"the daemon's share of the steady load (the off slices send the same traffic to a socket nobody "
          f"reads, so the sender costs the same in both): {share_steady:.2f} x (goal >= 0.90)")
    print(f"control, no traffic: another process spinning on the CPU in the on slices (what the sender's own "
          f"CPU use can cost on this machine, whatever the daemon does): {burn_only:.2f} x")
    ms = [ph.render_ms for ph in (base1, steady, base2, flood, base3)]
    if None not in ms:
        print("render-thread CPU per processed frame, ms: quiet {:.1f}, steady {:.1f}, quiet {:.1f}, flood {:.1f}, "
              "quiet {:.1f} (includes applying the changed parameters each frame)".format(*ms))
    results = [
        ("steady", r_steady >= 0.90),
        ("flood", r_flood >= 0.80),
        ("steady (paired)", pulsed_steady >= 0.90),
        ("steady (daemon's share)", share_steady >= 0.90),
        ("flood (paired)", pulsed_flood >= 0.80),
        ("last value wins", winner is not None and abs(applied - winner) < 1e-6),
        ("after flood", after_ms < 100),
    ]
    missed = [name for name, ok in results if not ok]
    print("goals: " + ("all met" if not missed else "MISSED " + ", ".join(missed)))
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
