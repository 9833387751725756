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
OSC receive, render and feedback threads during each phase (from ``/proc/self/task``, Linux; a
thread that does not exist is reported as n/a), and by the OSC receiver's own process when it
runs in one (``daemon.osc.pid``, from ``/proc/<pid>/stat``), datagrams received, dropped by the
kernel, coalesced and refused.

The same measurement on a GPU machine: ``--device cuda --arch sd-turbo`` (or ``sd15``) builds
that architecture with random weights on the GPU (speed does not depend on the weight values;
nothing is downloaded), at 512x512 in float16 with a 240 fps source by default, and
``--cpus 0,1`` pins this process (every thread of it), the OSC receiver's process if it has one,
and the flooder processes to those CPUs once the daemon is up (start-up, e.g. ``torch.compile``,
runs on all of them), so the run sees a small show PC's 2 cores, flooder included. ``--json``
writes every printed figure to a file.

Usage: .venv/bin/python bench/flood.py [--seconds 5] [--strict] [--json out.json]
       .venv/bin/python bench/flood.py --device cuda --arch sd-turbo --acceleration compile --cpus 0,1 \
           --seconds 4 --quiet 3 --rounds 8 --json flood.json
"""

from __future__ import annotations

import argparse
import json
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

def _stat_cpu(path: str) -> float | None:
    """CPU seconds (user + system) from a /proc ``stat`` file (Linux); None where unreadable."""
    try:
        with open(path, encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _thread_cpu(native_id: int | None) -> float | None:
    """CPU seconds (user + system) a thread of this process has used, from /proc (Linux)."""
    if native_id is None:
        return None
    return _stat_cpu(f"/proc/self/task/{native_id}/stat")


def _process_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process has used, all its threads together (Linux)."""
    if pid is None:
        return None
    return _stat_cpu(f"/proc/{pid}/stat")


class Phase:
    """Frames rendered and CPU used over a phase. ``probes``: name -> a function giving CPU
    seconds used so far (None where it cannot be read: the figure is then n/a)."""

    def __init__(self, daemon, probes: dict[str, Callable[[], float | None]]) -> None:
        self.daemon = daemon
        self.probes = probes

    def __enter__(self) -> Phase:
        self.t0 = time.perf_counter()
        self.f0 = self.daemon.frames_rendered
        self.cpu0 = {k: probe() for k, probe in self.probes.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.fps = (self.daemon.frames_rendered - self.f0) / self.seconds
        self.cpu: dict[str, float | None] = {}
        for k, probe in self.probes.items():
            a, b = self.cpu0[k], probe()
            self.cpu[k] = None if a is None or b is None else (b - a) / self.seconds

    def cpu_text(self) -> str:
        return ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in self.cpu.items())

    @property
    def render_ms(self) -> float | None:
        """Render-thread CPU per processed frame (independent of how much CPU other processes
        leave the daemon)."""
        cpu = self.cpu.get("render")
        return None if cpu is None or self.fps <= 0 else 1000 * cpu / self.fps

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "fps": round(self.fps, 3),
                "cpu_s_per_s": {k: None if v is None else round(v, 4) for k, v in self.cpu.items()},
                "render_ms_per_frame": None if self.render_ms is None else round(self.render_ms, 3)}


def parse_cpus(text: str) -> list[int]:
    """``0,1`` or ``0-3,6`` -> a sorted list of CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise argparse.ArgumentTypeError(f"--cpus should be a list like 0,1 or 0-3 but has {part!r}") from None
        if a < 0 or b < a:
            raise argparse.ArgumentTypeError(f"--cpus: {part!r} is not a CPU number or range")
        cpus.update(range(a, b + 1))
    if not cpus:
        raise argparse.ArgumentTypeError("--cpus is empty; give a list like 0,1")
    return sorted(cpus)


def thread_affinities(pid: int = 0) -> list[list[int]]:
    """The distinct CPU sets the threads of process ``pid`` (0: this one) may run on."""
    seen: set[tuple[int, ...]] = set()
    try:
        tids = [int(t.name) for t in Path(f"/proc/{pid or os.getpid()}/task").iterdir()]
    except OSError:
        return []
    for tid in tids:
        try:
            seen.add(tuple(sorted(os.sched_getaffinity(tid))))
        except OSError:
            pass
    return [list(c) for c in sorted(seen)]


def pin_process(pid: int, cpus: list[int]) -> list[str]:
    """Pin every thread of process ``pid`` (0: this one) to ``cpus``; threads created later
    inherit it. Returns the problems (a thread that ended meanwhile is none)."""
    problems = []
    tasks_dir = Path(f"/proc/{pid or os.getpid()}/task")
    try:
        tids = [int(t.name) for t in tasks_dir.iterdir()]
    except OSError as exc:
        return [f"cannot list the threads of process {pid or os.getpid()}: {exc}"]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:
            pass
        except OSError as exc:
            problems.append(f"thread {tid}: {exc}")
    return problems


def _inbox_stats(daemon) -> dict[str, int]:
    inbox = getattr(daemon.controller, "inbox", None)  # absent before the bounded control path
    return inbox.stats() if inbox is not None else {}


def run_flooder(port: int, rate: float, seconds: float, kind: str, pulse: float = 0.0,
                decoy_port: int = 0, cpus: list[int] | None = None) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, __file__, "--flooder", kind, str(port), str(rate), str(seconds), str(pulse), str(decoy_port),
         str(STEADY_BURST_HZ if kind == "steady" else 1000.0)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    if cpus:  # inherited from this process already; set again so it holds whatever started it
        os.sched_setaffinity(p.pid, cpus)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def run_defaults(args: argparse.Namespace) -> tuple[int, str, float]:
    """Image side, dtype and source rate of the run: what was given, else the defaults of its
    architecture and device."""
    tiny = args.arch == "tiny"
    size = args.size or (64 if tiny else 512)
    dtype = args.dtype or ("float32" if args.device.split(":")[0] == "cpu" else "float16")
    source_fps = args.source_fps or (90.0 if tiny else 240.0)
    return size, dtype, source_fps


def config_data(args: argparse.Namespace, model: str, presets: Path) -> dict[str, Any]:
    """The daemon config of the run, as ``streambridge run`` would read it from a file."""
    size, dtype, source_fps = run_defaults(args)
    model_spec: dict[str, Any] = {"model": model, "device": args.device, "dtype": dtype}
    if args.arch != "tiny":
        model_spec["lcm_lora"] = "none"  # random weights: nothing to fuse
    pipeline: dict[str, Any] = {"size": [size, size], "steps": [32, 45], "cfg": "self"}
    if args.acceleration:
        pipeline["acceleration"] = args.acceleration
    osc: dict[str, Any] = {"listen": "127.0.0.1:0", "feedback": ["127.0.0.1:9"], "status_rate": 2}
    if args.receiver:
        osc["receiver"] = args.receiver
    return {
        "model": model_spec,
        "pipeline": pipeline,
        "source": {"type": "pattern", "width": size, "height": size, "fps": source_fps},
        "sinks": [{"type": "null"}],
        "output": {"fps": 30},
        "osc": osc,
        "presets": {"folder": str(presets)},
    }


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each load phase")
    ap.add_argument("--quiet", type=float, default=4.0, help="length of each baseline phase")
    ap.add_argument("--steady-rate", type=float, default=2000.0)
    ap.add_argument("--flood-rate", type=float, default=20000.0)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    ap.add_argument("--pulse", type=float, default=0.5, help="slice length of the paired on/off rounds")
    ap.add_argument("--rounds", type=int, default=10, help="paired on/off rounds per load")
    ap.add_argument("--device", default="cpu", help="torch device of the pipeline (cpu, cuda, cuda:1, ...)")
    ap.add_argument("--arch", choices=("tiny", "sd-turbo", "sd15"), default="tiny",
                    help="tiny: the generated tiny model; sd-turbo / sd15: that architecture with random weights")
    ap.add_argument("--size", type=int, default=None, help="image side in px (default 64 for tiny, 512 otherwise)")
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                    help="default float32 on the CPU, float16 on CUDA")
    ap.add_argument("--acceleration", default=None,
                    help="pipeline.acceleration (none, compile, ...); default: the config's default")
    ap.add_argument("--source-fps", type=float, default=None,
                    help="pattern source rate, above the render loop's (default 90 for tiny, 240 otherwise)")
    ap.add_argument("--receiver", choices=("thread", "process"), default=None,
                    help="osc.receiver of the daemon config (not set when not given)")
    ap.add_argument("--cpus", type=parse_cpus, default=None,
                    help="pin this process, the OSC receiver's process and the flooders to these CPUs, e.g. 0,1 "
                         "(once the daemon is up)")
    ap.add_argument("--startup-timeout", type=float, default=600.0,
                    help="seconds to wait for the first processed frame after start-up")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of rendering before the first phase")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="write every figure as JSON here")
    ap.add_argument("--flooder", nargs=7, metavar=("KIND", "PORT", "RATE", "SECONDS", "PULSE", "DECOY", "BURST_HZ"),
                    help=argparse.SUPPRESS)
    return ap


def main() -> int:
    args = build_parser().parse_args()
    if args.flooder:
        kind, port, rate, seconds, pulse, decoy_port, burst_hz = args.flooder
        flooder("127.0.0.1", int(port), float(rate), float(seconds), kind, float(pulse), int(decoy_port),
                float(burst_hz))
        return 0

    if args.cpus and not set(args.cpus) <= os.sched_getaffinity(0):
        ap_error = (f"--cpus {','.join(map(str, args.cpus))}: this process may only run on CPUs "
                    f"{','.join(map(str, sorted(os.sched_getaffinity(0))))}")
        build_parser().error(ap_error)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch
    from pydantic import ValidationError

    from bridge.config import DaemonConfig
    from bridge.control.surface import SetParams
    from bridge.daemon import Daemon, DaemonOptions

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        logging.error("--device %s, but torch sees no CUDA GPU (torch %s, built for CUDA %s)", args.device,
                      torch.__version__, torch.version.cuda)
        return 2
    tiny = args.arch == "tiny"
    size, dtype, source_fps = run_defaults(args)
    if device.type == "cpu":
        torch.set_num_threads(1)  # one core for the render loop, one for everything else
    tmp = Path(tempfile.mkdtemp(prefix="flood-bench-"))
    components = None
    t_build = time.perf_counter()
    if tiny:
        from stream_core.tiny import make_tiny_model

        model = str(make_tiny_model(tmp / "model"))
    else:
        model = f"random:{args.arch}"  # the components are built below, once the config is valid
    (tmp / "presets").mkdir()
    try:
        cfg = DaemonConfig.model_validate(config_data(args, model, tmp / "presets"))
    except ValidationError as exc:
        logging.error("the daemon config of this run is not valid (options %s): %s", " ".join(sys.argv[1:]), exc)
        return 2
    if not tiny:
        from stream_core.archs import build_random_components

        components = build_random_components(args.arch, device, getattr(torch, dtype), tmp / "tok")
    build_s = time.perf_counter() - t_build
    t_start = time.perf_counter()
    daemon = Daemon(cfg, DaemonOptions(prewarm_timeout=30 if tiny else 120, components=components))
    daemon.start()
    deadline = time.monotonic() + args.startup_timeout
    while daemon.frames_rendered == 0 and daemon.render_errors == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    startup_s = time.perf_counter() - t_start
    if daemon.frames_rendered == 0:
        errors = daemon.render_errors
        daemon.stop()
        logging.error("no frame processed within %.0f s of start-up (%d render errors, logged above)",
                      time.perf_counter() - t_start, errors)
        return 2
    osc = daemon.osc
    port = osc.address[1]
    receiver_pid = getattr(osc, "pid", None)  # the OSC receiver's own process, where it has one
    pinned: dict[str, Any] = {}
    if args.cpus:
        problems = pin_process(0, args.cpus)
        if receiver_pid is not None:
            problems += pin_process(receiver_pid, args.cpus)
        if problems:
            daemon.stop()
            logging.error("--cpus %s: cannot pin: %s", ",".join(map(str, args.cpus)), "; ".join(problems))
            return 2
        pinned["receiver_process"] = sorted(os.sched_getaffinity(receiver_pid)) if receiver_pid is not None else None
    by_name = {t.name: t for t in threading.enumerate()}
    probes: dict[str, Callable[[], float | None]] = {}
    for name in ("osc-receive", "render", "feedback"):
        native_id = by_name[name].native_id if name in by_name else None  # n/a where the thread is absent
        probes[name] = lambda native_id=native_id: _thread_cpu(native_id)
    if receiver_pid is not None:
        probes["osc-process"] = lambda: _process_cpu(receiver_pid)
    flooder_affinity: list[list[int]] = []

    def start_flooder(*a: Any, **kw: Any) -> subprocess.Popen:
        p = run_flooder(*a, cpus=args.cpus, **kw)
        try:
            flooder_affinity.append(sorted(os.sched_getaffinity(p.pid)))
        except OSError:
            pass
        return p

    # record the last valid strength that reached the inbox (the value that must win)
    last_accepted: list[float] = []
    real_submit = getattr(osc, "on_batch", None)  # where the receiver hands over in this process

    def recording_submit(batch):
        for cmd in batch:
            if isinstance(cmd, SetParams) and "strength" in cmd.values:
                last_accepted.append(cmd.values["strength"])
        return real_submit(batch)

    if real_submit is not None:
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
        p = start_flooder(port, rate, args.seconds, kind)
        with Phase(daemon, probes) as ph:
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
        p = start_flooder(port, rate, n * args.pulse, kind, args.pulse, decoy_port)
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
        with Phase(daemon, probes) as ph:
            time.sleep(args.quiet)
        return ph

    load0 = os.getloadavg()[0]
    time.sleep(args.warmup)  # warm up
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
    f_settled = daemon.frames_rendered
    time.sleep(0.2)  # a few ticks
    wait_until = time.monotonic() + 30.0  # and at least two frames, however slow they are
    while daemon.frames_rendered < f_settled + 2 and time.monotonic() < wait_until:
        time.sleep(0.01)
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
    affinity_threads = thread_affinities()  # while the daemon's threads run
    daemon.stop()
    decoy.close()

    load1 = os.getloadavg()[0]
    b_steady = (base1.fps + base2.fps) / 2
    b_flood = (base2.fps + base3.fps) / 2
    # None where the quiet phases rendered nothing (a frame slower than a phase): no ratio, goal missed
    r_steady = steady.fps / b_steady if b_steady > 0 else None
    r_flood = flood.fps / b_flood if b_flood > 0 else None
    t_steady = f"{r_steady:.2f}" if r_steady is not None else "n/a"
    t_flood = f"{r_flood:.2f}" if r_flood is not None else "n/a"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    model_text = (f"tiny model {size}x{size}" if tiny else f"{args.arch} (random weights) {size}x{size} {dtype}"
                  + (f" on {gpu}" if gpu else f" on {args.device}"))
    accel = getattr(daemon.engine, "acceleration_info", None)
    accel_text = (f", acceleration {accel.get('backend')}" if isinstance(accel, dict)
                  else f", acceleration {cfg.pipeline.acceleration}") if args.acceleration or not tiny else ""
    pin_text = f", pinned to CPUs {','.join(map(str, args.cpus))} (flooders included)" if args.cpus else ""
    threads_text = f"torch threads {torch.get_num_threads()}"
    print(f"host: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"{model_text}, 2 steps{accel_text}, pattern source at {source_fps:g} fps, {threads_text}{pin_text}; "
          f"load average at start {load0:.1f}, end {load1:.1f} (other processes skew the ratios)")
    if not tiny or args.cpus:
        print(f"model build {build_s:.1f} s, start-up to the first processed frame {startup_s:.1f} s")
    print(f"baseline processed fps: {base1.fps:.1f} / {base2.fps:.1f} / {base3.fps:.1f}  "
          f"(thread CPU s/s: {base2.cpu_text()})")
    steady_received = s1["received"] - s0["received"]
    flood_received = s2["received"] - s1["received"]
    print(f"steady {args.steady_rate:.0f} msg/s over 20 addresses: sent {steady_sent}, received "
          f"{steady_received}, processed fps {steady.fps:.1f} = {t_steady} x baseline "
          f"(goal >= 0.90)  (thread CPU s/s: {steady.cpu_text()})")
    print(f"flood {args.flood_rate:.0f} pkt/s, half invalid: sent {flood_sent}, received "
          f"{flood_received}, kernel drops {drops1 - drops0}, processed fps {flood.fps:.1f} = "
          f"{t_flood} x baseline (goal >= 0.80)  (thread CPU s/s: {flood.cpu_text()})")
    inbox_flood: dict[str, int] = {}
    if inbox1:
        inbox_flood = {"values": inbox1["params"] - inbox0["params"],
                       "coalesced": inbox1["coalesced"] - inbox0["coalesced"],
                       "throttled": s2.get("throttled", 0) - s1.get("throttled", 0)}
        print(f"  inbox during the flood: {inbox_flood['values']} values received, "
              f"{inbox_flood['coalesced']} coalesced away before a tick; receiver "
              f"slices cut short by its duty limit {inbox_flood['throttled']} times")
    last_ok = winner is not None and abs(applied - winner) < 1e-6
    print(f"last valid value that arrived: {winner}, applied: {applied} -> "
          f"{'ok' if last_ok else 'MISMATCH'}")
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
        ("steady", r_steady is not None and r_steady >= 0.90),
        ("flood", r_flood is not None and r_flood >= 0.80),
        ("steady (paired)", pulsed_steady >= 0.90),
        ("steady (daemon's share)", share_steady >= 0.90),
        ("flood (paired)", pulsed_flood >= 0.80),
        ("last value wins", last_ok),
        ("after flood", after_ms < 100),
    ]
    missed = [name for name, ok in results if not ok]
    print("goals: " + ("all met" if not missed else "MISSED " + ", ".join(missed)))
    if args.json:
        report = {
            "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
                     "cuda": torch.version.cuda, "gpu": gpu, "torch_threads": torch.get_num_threads(),
                     "load_average_start": round(load0, 2), "load_average_end": round(load1, 2),
                     "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                     "affinity_threads": affinity_threads,
                     "affinity_receiver_process": pinned.get("receiver_process"),
                     "affinity_flooders": flooder_affinity,
                     "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "args": {k: v for k, v in vars(args).items() if k != "flooder"} | {
                "json": str(args.json), "size": size, "dtype": dtype, "source_fps": source_fps},
            "run": {"arch": args.arch, "device": args.device, "size": size, "dtype": dtype,
                    "steps": list(cfg.pipeline.steps), "cfg": cfg.pipeline.cfg,
                    "acceleration_configured": cfg.pipeline.acceleration,
                    "acceleration": ({k: str(v) for k, v in accel.items()} if isinstance(accel, dict) else None),
                    "receiver": args.receiver, "receiver_pid": receiver_pid,
                    "model_build_s": round(build_s, 2), "startup_s": round(startup_s, 2),
                    "frames_rendered": daemon.frames_rendered, "render_errors": daemon.render_errors},
            "phases": {"quiet_1": base1.as_dict(), "steady": steady.as_dict(), "quiet_2": base2.as_dict(),
                       "flood": flood.as_dict(), "quiet_3": base3.as_dict()},
            "baselines": {"steady": round(b_steady, 3), "flood": round(b_flood, 3)},
            "steady": {"rate": args.steady_rate, "sent": steady_sent, "received": steady_received,
                       "fps": round(steady.fps, 3), "ratio": None if r_steady is None else round(r_steady, 4), "goal": 0.90},
            "flood": {"rate": args.flood_rate, "sent": flood_sent, "received": flood_received,
                      "kernel_drops": drops1 - drops0, "fps": round(flood.fps, 3), "ratio": None if r_flood is None else round(r_flood, 4),
                      "goal": 0.80, "inbox": inbox_flood or None},
            "last_value_wins": {"last_valid_sent": winner, "applied": applied, "ok": last_ok,
                                "measured": real_submit is not None},
            "after_flood": {"applied_ms": round(after_ms, 2), "goal_ms": 100, "ok": after_ms < 100},
            "paired": {"rounds": args.rounds, "pulse_s": args.pulse, "steady": round(pulsed_steady, 4),
                       "flood": round(pulsed_flood, 4), "steady_daemon_share": round(share_steady, 4),
                       "control_burn": round(burn_only, 4)},
            "goals": {name: ok for name, ok in results},
            "missed": missed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"JSON: {args.json}")
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
