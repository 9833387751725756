"""Soak / chaos run: the real daemon for N minutes while everything that goes wrong in a show goes wrong.

Runs the daemon in-process (tiny model, real OSC over loopback UDP, a real NDI sender in a child
process as the source) and repeats one chaos cycle until the time is up:

* random valid OSC all the time from a child process (faders, prompts, seed crossfader, preset
  recalls with transitions), like a controller in a show;
* an OSC flood (``--flood-pps`` packets/s, half of them garbage) from another child process;
* the NDI sender vanishes (its process is killed) and comes back;
* one of the two sinks fails (its ``send`` raises) for a few seconds;
* the render loop stalls (the U-Net call blocks) for ``--stall`` seconds;
* the OSC receiver process is killed (SIGKILL, as the out-of-memory killer would): the daemon
  must start another on the same port, and OSC must keep working.

The other sink is the probe: it records the time of every frame the publisher hands it, so the
script sees what a projector would see. Every second it samples the output's longest gap, output
and processed fps, the RSS of the process and of its OSC receiver process, the thread count, the source and render states; at the end it
prints a table, the events, every WARNING/ERROR line logged (deduplicated, with counts) and checks:

* longest output gap <= ``--max-gap-ms`` (default 3 output intervals + 50 ms);
* RSS growth over the run's second half <= ``--max-rss-growth-mb``;
* thread count at the end <= at the start of the chaos + 4;
* a ``/sd/strength`` sent after the run applies within 100 ms;
* the processed frame rate during floods stays >= ``--min-flood-ratio`` (0.8) of the calm seconds'.

Usage::

    python bench/soak.py --minutes 10               # the documented run
    python bench/soak.py --seconds 30 --cycle 15     # a quick look
    python bench/soak.py --source pattern            # without NDI (no source vanishing)

Exit status 0 when every check passes, 1 otherwise. ``--json FILE`` writes the samples and results.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("soak")


# ---------------------------------------------------------------------------------- child processes
def _ndi_sender(name: str, fps: float, width: int, height: int) -> None:
    """A raw NDIlib sender (not our sink) sending a moving gradient until killed."""
    import numpy as np

    from bridge.io.ndi import load_ndi

    lib = load_ndi()
    settings = lib.SendCreate()
    settings.ndi_name = name
    settings.clock_video = False
    raw = lib.send_create(settings)
    yy, xx = np.mgrid[0:height, 0:width]
    k = 0
    period = 1.0 / fps
    nxt = time.monotonic()
    while True:
        bgra = np.empty((height, width, 4), np.uint8)
        bgra[..., 0] = 128
        bgra[..., 1] = (yy * 255 // height).astype(np.uint8)
        bgra[..., 2] = ((xx * 255 // width + 3 * k) % 256).astype(np.uint8)
        bgra[..., 3] = 255
        frame = lib.VideoFrameV2()
        frame.FourCC = lib.FOURCC_VIDEO_TYPE_BGRX
        frame.data = bgra
        frame.frame_rate_N, frame.frame_rate_D = int(fps * 1000), 1000
        lib.send_send_video_v2(raw, frame)
        k += 1
        nxt += period
        time.sleep(max(0.0, nxt - time.monotonic()))


def _osc_player(port: int, rate: float, presets: list[str], seed: int) -> None:
    """Random valid OSC, like a controller in a show: faders most of the time, now and then a
    prompt, a seed crossfade or a preset recall with a transition."""
    from bridge.control.codec import encode_message

    rng = random.Random(seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    faders = ["/sd/strength", "/sd/guidance", "/sd/delta", "/sd/mix", "/sd/seed/mix", "/sd/prompt/mix",
              "/sd/smoothing", "/sd/norm/guidance", "/sd/norm/strength"]
    prompts = ["a neon city at night", "an oil painting of a harbour", "ink wash mountains",
               "a chrome glitch sculpture", "a watercolour forest"]
    period = 1.0 / rate
    nxt = time.monotonic()
    k = 0
    while True:
        k += 1
        roll = rng.random()
        if presets and k % max(1, int(rate * 4)) == 0:
            pkt = encode_message("/sd/transition", rng.choice([0.5, 1.0, 2.0]))
            sock.sendto(pkt, ("127.0.0.1", port))
            pkt = encode_message("/sd/preset", rng.choice(presets))
        elif roll < 0.02:
            pkt = encode_message("/sd/prompt", rng.choice(prompts))
        elif roll < 0.04:
            pkt = encode_message("/sd/seed/b", rng.randrange(0, 5000))
        else:
            address = rng.choice(faders)
            value = rng.random()
            if address == "/sd/smoothing":
                value *= 0.9
            elif address == "/sd/guidance":
                value *= 3.0
            elif address == "/sd/delta":
                value *= 2.0
            pkt = encode_message(address, float(value))
        sock.sendto(pkt, ("127.0.0.1", port))
        nxt += period
        time.sleep(max(0.0, nxt - time.monotonic()))


def _flooder(port: int, pps: float, seconds: float, seed: int) -> None:
    """``pps`` packets/s for ``seconds``: half valid ``/sd/strength`` values, half garbage."""
    from bridge.control.codec import encode_message

    rng = random.Random(seed)
    valid = [encode_message("/sd/strength", rng.random()) for _ in range(256)]
    garbage = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for _ in range(128)]
    garbage += [encode_message("/sd/strength", "not a number"), encode_message("/sd/nope", 1.0),
                encode_message("/sd/guidance", 1e9), b"#bundle\0" + b"\xff" * 12]
    packets = [p for pair in zip(valid, garbage * 2, strict=False) for p in pair]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    burst = max(1, int(pps / 200))  # 200 bursts a second
    t0 = time.monotonic()
    sent = 0
    while time.monotonic() - t0 < seconds:
        for _ in range(burst):
            try:
                sock.sendto(packets[sent % len(packets)], ("127.0.0.1", port))
            except OSError:
                pass
            sent += 1
        ahead = sent / pps - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)


# ---------------------------------------------------------------------------------- in-process faults
class ProbeSink:
    """Wraps the first sink: records the time of every frame the publisher hands over."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.times: collections.deque[float] = collections.deque(maxlen=100_000)
        self.last: float | None = None
        self.max_gap_since_sample = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def send(self, rgb: Any) -> None:
        now = time.monotonic()
        with self.lock:
            if self.last is not None:
                self.max_gap_since_sample = max(self.max_gap_since_sample, now - self.last)
            self.last = now
            self.times.append(now)
        self.inner.send(rgb)

    def take_max_gap(self) -> float:
        """The longest gap since the last call (counting the open gap up to now)."""
        now = time.monotonic()
        with self.lock:
            gap = max(self.max_gap_since_sample, now - self.last if self.last is not None else 0.0)
            self.max_gap_since_sample = 0.0
        return gap

    def count_since(self, t: float) -> int:
        with self.lock:
            return sum(1 for x in self.times if x >= t)


class FlakySink:
    """Wraps the second sink: ``send`` raises while ``failing`` is set (a sink that dies mid-show)."""

    failing = threading.Event()

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def send(self, rgb: Any) -> None:
        if self.failing.is_set():
            raise OSError("injected sink failure (soak)")
        self.inner.send(rgb)


class StallingRunner:
    """Wraps the pipeline's runner: the U-Net call blocks while ``stall_until`` is in the future."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.stall_until = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def unet(self, *args: Any, **kw: Any) -> Any:
        while time.monotonic() < self.stall_until:
            time.sleep(0.01)
        return self.inner.unet(*args, **kw)


class ErrorLines(logging.Handler):
    """Keeps every WARNING+ line (deduplicated with counts; the first 500 distinct)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: collections.Counter[str] = collections.Counter()
        self.tracebacks = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = f"{record.levelname} {record.name}: {record.getMessage()}"
        except Exception:  # a bad format string must not break the soak
            line = f"{record.levelname} {record.name}: {record.msg!r}"
        if record.exc_info:
            self.tracebacks += 1
            line += f" [traceback: {record.exc_info[0].__name__ if record.exc_info[0] else '?'}]"
        if line in self.counts or len(self.counts) < 500:
            self.counts[line] += 1


def rss_mb(also: int | None = None) -> float:
    """This process's resident memory, plus process ``also``'s (the OSC receiver's) when given."""
    total = 0.0
    for pid in ("self", also):
        if pid is None:
            continue
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024.0
        except OSError:
            if pid == "self":
                return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return total


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


# ---------------------------------------------------------------------------------- the run
@dataclass
class Plan:
    """One chaos cycle (seconds from its start). Scaled to ``cycle`` seconds."""

    cycle: float
    flood: tuple[float, float] = (0.10, 0.18)
    source_gone: tuple[float, float] = (0.30, 0.40)
    sink_fail: tuple[float, float] = (0.50, 0.58)
    stall_at: float = 0.70
    receiver_killed: float = 0.85  # the OSC receiver process is killed (as by the OOM killer)

    def at(self, frac: float) -> float:
        return frac * self.cycle

    def label(self, phase: float, stall: float) -> str:
        """What the chaos is doing ``phase`` seconds into a cycle (the sample's last second)."""
        for name, (a, b) in (("flood", self.flood), ("source gone", self.source_gone), ("sink fails", self.sink_fail)):
            if self.at(a) <= phase < self.at(b) + 1.0:
                return name
        if self.at(self.stall_at) <= phase < self.at(self.stall_at) + stall + 1.0:
            return "render stall"
        return "calm"


@dataclass
class Sample:
    t: float
    out_fps: float
    processed_fps: float
    max_gap_ms: float
    rss_mb: float
    threads: int
    source: str
    render: str
    phase: str = "calm"
    events: list[str] = field(default_factory=list)


def build_daemon(args: argparse.Namespace, work: Path, ndi_name: str | None) -> tuple[Any, ProbeSink, list]:
    import bridge.daemon as daemon_mod
    from bridge.config import DaemonConfig
    from bridge.daemon import Daemon, DaemonOptions
    from stream_core.tiny import make_tiny_model

    model = Path(tempfile.gettempdir()) / "streambridge-bench-tiny"
    if not (model / "model_index.json").exists():
        make_tiny_model(model)
    presets = work / "presets"
    presets.mkdir()
    for f in (REPO / "presets").glob("*.yaml"):
        shutil.copy(f, presets / f.name)
    if ndi_name is not None:
        source = {"type": "ndi", "name": ndi_name}
    else:
        source = {"type": "pattern", "width": args.size, "height": args.size, "fps": args.fps}
    cfg = DaemonConfig.model_validate({
        "model": {"model": str(model), "device": "cpu"},
        "pipeline": {"size": [args.size, args.size], "steps": [32, 45]},
        "source": source,
        "sinks": [{"type": "null"}, {"type": "null"}],
        "output": {"fps": args.fps},
        "osc": {"listen": "127.0.0.1:0"},
        "presets": {"folder": str(presets)},
    })
    made: list[Any] = []
    real_create = daemon_mod.create_sink

    def create(c: Any) -> Any:
        sink = real_create(c)
        wrapped = ProbeSink(sink) if not made else FlakySink(sink)
        made.append(wrapped)
        return wrapped

    daemon_mod.create_sink = create
    d = Daemon(cfg, DaemonOptions(prewarm_timeout=60))
    d.start()
    deadline = time.monotonic() + 30
    while not made and time.monotonic() < deadline:
        time.sleep(0.05)
    probe = next((s for s in made if isinstance(s, ProbeSink)), None)
    if probe is None:
        raise SystemExit("the publisher opened no sink within 30 s")
    return d, probe, made


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    errors = ErrorLines()
    logging.getLogger().addHandler(errors)
    work = Path(tempfile.mkdtemp(prefix="streambridge-soak-"))
    ctx = mp.get_context("spawn")
    children: list[mp.process.BaseProcess] = []
    ndi_name = None
    sender = None

    def start_sender() -> mp.process.BaseProcess:
        p = ctx.Process(target=_ndi_sender, args=(ndi_name, args.fps, args.size + 32, args.size), daemon=True)
        p.start()
        return p

    if args.source == "ndi":
        from bridge.io.ndi import load_ndi

        load_ndi()  # a clear error now if the NDI runtime is missing
        ndi_name = f"soak-{os.getpid()}"
        sender = start_sender()
    total = args.minutes * 60.0 if args.seconds is None else args.seconds
    plan = Plan(cycle=args.cycle)
    d, probe, _ = build_daemon(args, work, ndi_name)
    runner = StallingRunner(d.engine.pipeline.runner)
    d.engine.pipeline.runner = runner
    presets = d.presets.names() if d.presets is not None else []
    player = ctx.Process(target=_osc_player, args=(d.osc.address[1], args.osc_rate, presets, 1), daemon=True)
    player.start()
    children.append(player)
    # settle: the first seconds (NDI discovery, pre-warm) are not part of the measurement
    settle_end = time.monotonic() + args.settle
    while time.monotonic() < settle_end:
        time.sleep(0.1)
    probe.take_max_gap()
    start_threads = os_threads()
    start_rss = rss_mb(getattr(d.osc, "pid", None))
    samples: list[Sample] = []
    events: list[tuple[float, str]] = []
    t0 = time.monotonic()
    last_rendered = d.frames_rendered
    last_sample = t0
    flood: mp.process.BaseProcess | None = None
    cycle_done: dict[str, int] = collections.defaultdict(lambda: -1)

    def event(text: str) -> None:
        events.append((time.monotonic() - t0, text))
        pending_events.append(text)

    pending_events: list[str] = []
    try:
        while (now := time.monotonic()) - t0 < total:
            rel = now - t0
            k, phase = int(rel // plan.cycle), (rel % plan.cycle)
            if plan.at(plan.flood[0]) <= phase < plan.at(plan.flood[1]) and cycle_done["flood"] < k:
                cycle_done["flood"] = k
                secs = plan.at(plan.flood[1]) - plan.at(plan.flood[0])
                flood = ctx.Process(target=_flooder, args=(d.osc.address[1], args.flood_pps, secs, k), daemon=True)
                flood.start()
                children.append(flood)
                event(f"flood {args.flood_pps:.0f} pkt/s for {secs:.1f} s")
            if sender is not None and plan.at(plan.source_gone[0]) <= phase < plan.at(plan.source_gone[1]) \
                    and cycle_done["gone"] < k:
                cycle_done["gone"] = k
                sender.kill()
                sender.join(2)
                event("NDI sender killed")
            if sender is not None and phase >= plan.at(plan.source_gone[1]) and cycle_done["gone"] == k \
                    and cycle_done["back"] < k:
                cycle_done["back"] = k
                sender = start_sender()
                event("NDI sender back")
            if plan.at(plan.sink_fail[0]) <= phase < plan.at(plan.sink_fail[1]):
                if not FlakySink.failing.is_set():
                    FlakySink.failing.set()
                    event("sink 2 failing")
            elif FlakySink.failing.is_set():
                FlakySink.failing.clear()
                event("sink 2 healthy")
            if phase >= plan.at(plan.stall_at) and cycle_done["stall"] < k:
                cycle_done["stall"] = k
                runner.stall_until = time.monotonic() + args.stall
                event(f"render stalls {args.stall:.1f} s")
            receiver_pid = getattr(d.osc, "pid", None)
            if phase >= plan.at(plan.receiver_killed) and cycle_done["receiver"] < k and receiver_pid:
                cycle_done["receiver"] = k
                os.kill(receiver_pid, signal.SIGKILL)
                event("OSC receiver process killed")
            if now - last_sample >= 1.0:
                st = d.status()
                rendered = d.frames_rendered
                samples.append(Sample(
                    t=round(rel, 1), out_fps=float(st.get("fps", 0.0)),
                    processed_fps=round((rendered - last_rendered) / (now - last_sample), 2),
                    max_gap_ms=round(1000 * probe.take_max_gap(), 1), rss_mb=round(rss_mb(receiver_pid), 1),
                    threads=os_threads(), source=str(st.get("source", "?")), render=str(st.get("render", "-")),
                    phase=plan.label(phase, args.stall), events=list(pending_events)))
                pending_events.clear()
                last_rendered, last_sample = rendered, now
            time.sleep(0.02)
        FlakySink.failing.clear()
        runner.stall_until = 0.0
        # after the run: a change must still apply within 100 ms
        player.kill()
        player.join(2)
        time.sleep(0.5)
        applied_ms = control_latency(d)
        receiver_restarts = d.osc.stats().get("restarts")
        end_threads = os_threads()
        end_rss = rss_mb(getattr(d.osc, "pid", None))
    finally:
        for p in children + ([sender] if sender is not None else []):
            if p.is_alive():
                p.kill()
                p.join(2)
        d.stop()
        shutil.rmtree(work, ignore_errors=True)
        logging.getLogger().removeHandler(errors)
    return report(args, samples, events, errors, start_threads, end_threads, start_rss, end_rss, applied_ms,
                  receiver_restarts)


def control_latency(d: Any) -> float | None:
    """Send ``/sd/strength`` and time until the controller holds it (None if not within 2 s)."""
    from bridge.control.codec import encode_message

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = 0.4242
    t = time.monotonic()
    sock.sendto(encode_message("/sd/strength", target), ("127.0.0.1", d.osc.address[1]))
    while time.monotonic() - t < 2.0:
        if abs(float(d.controller.values.get("strength", -1)) - target) < 1e-4:
            return 1000 * (time.monotonic() - t)
        time.sleep(0.001)
    return None


def report(args: argparse.Namespace, samples: list[Sample], events: list[tuple[float, str]], errors: ErrorLines,
           start_threads: int, end_threads: int, start_rss: float, end_rss: float,
           applied_ms: float | None, receiver_restarts: int | None = None) -> int:
    out_interval_ms = 1000.0 / args.fps
    max_gap_limit = args.max_gap_ms if args.max_gap_ms is not None else 3 * out_interval_ms + 50
    print(f"# bench/soak.py  {time.strftime('%Y-%m-%d %H:%M')}  {len(samples)} s  source {args.source}  "
          f"{args.size}px tiny model  output {args.fps:g} fps  cycle {args.cycle:g} s  "
          f"flood {args.flood_pps:.0f} pkt/s  stall {args.stall:g} s  osc {args.osc_rate:g} msg/s")
    print(f"{'t s':>6} {'out fps':>8} {'proc fps':>9} {'max gap ms':>11} {'RSS MB':>8} {'threads':>8} "
          f"{'source':>12} {'render':>8}  events")
    every = max(1, len(samples) // 60)
    for i, s in enumerate(samples):
        interesting = s.events or s.max_gap_ms > max_gap_limit
        if i % every == 0 or interesting:
            print(f"{s.t:>6.0f} {s.out_fps:>8.1f} {s.processed_fps:>9.1f} {s.max_gap_ms:>11.1f} {s.rss_mb:>8.1f} "
                  f"{s.threads:>8d} {s.source:>12} {s.render:>8}  {'; '.join(s.events)}")
    gaps = [s.max_gap_ms for s in samples]
    longest = max(gaps) if gaps else float("inf")
    half = samples[len(samples) // 2:] or samples
    rss_growth = (max(s.rss_mb for s in half) - half[0].rss_mb) if half else 0.0
    max_threads = max((s.threads for s in samples), default=end_threads)
    proc = [s.processed_fps for s in samples]
    print()
    print(f"output: longest gap {longest:.1f} ms (limit {max_gap_limit:.0f}), median of per-second maxima "
          f"{statistics.median(gaps) if gaps else 0:.1f} ms; processed fps median {statistics.median(proc) if proc else 0:.1f}")
    by_phase: dict[str, list[float]] = collections.defaultdict(list)
    for s in samples:
        by_phase[s.phase].append(s.processed_fps)
    calm = statistics.median(by_phase["calm"]) if by_phase.get("calm") else 0.0
    for name, values in by_phase.items():
        med = statistics.median(values)
        ratio = f"{med / calm:.2f}x calm" if calm > 0 else "-"
        gap = max(s.max_gap_ms for s in samples if s.phase == name)
        print(f"  {name:<13} {len(values):>4} s  processed fps median {med:>6.1f} ({ratio})  longest output gap {gap:.1f} ms")
    print(f"memory: RSS {start_rss:.1f} MB at the start, {end_rss:.1f} MB at the end, growth over the second half "
          f"{rss_growth:+.1f} MB (limit {args.max_rss_growth_mb:g})")
    print(f"threads: {start_threads} at the start, {end_threads} at the end, {max_threads} at most")
    print(f"control after the run: /sd/strength applied in "
          f"{'NOT APPLIED within 2 s' if applied_ms is None else f'{applied_ms:.1f} ms'}")
    print(f"events: {len(events)}; log lines WARNING+: {sum(errors.counts.values())} "
          f"({len(errors.counts)} distinct, {errors.tracebacks} with a traceback)")
    for line, n in errors.counts.most_common():
        print(f"  {n:>6} x {line}")
    checks = {
        "longest output gap": longest <= max_gap_limit,
        "RSS growth": rss_growth <= args.max_rss_growth_mb,
        "threads": end_threads <= start_threads + 4,
        "control after the run": applied_ms is not None and applied_ms <= 100.0,
    }
    kills = sum(1 for _, text in events if text == "OSC receiver process killed")
    if kills:
        print(f"OSC receiver process: killed {kills} times, started again {receiver_restarts} times")
        checks["OSC receiver restarted after every kill"] = receiver_restarts == kills
    if by_phase.get("flood") and calm > 0:
        checks["processed fps under flood"] = statistics.median(by_phase["flood"]) >= args.min_flood_ratio * calm
    for name, ok in checks.items():
        print(f"{name}: {'PASS' if ok else 'MISS'}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "samples": [s.__dict__ for s in samples], "events": events,
            "errors": dict(errors.counts), "tracebacks": errors.tracebacks, "start_threads": start_threads,
            "end_threads": end_threads, "start_rss_mb": start_rss, "end_rss_mb": end_rss,
            "longest_gap_ms": longest, "processed_fps_by_phase": {k: statistics.median(v) for k, v in by_phase.items()}, "rss_growth_mb": rss_growth, "control_ms": applied_ms, "receiver_restarts": receiver_restarts, "checks": checks,
        }, indent=1))
    return 0 if all(checks.values()) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=None, help="overrides --minutes")
    ap.add_argument("--cycle", type=float, default=60.0, help="seconds per chaos cycle")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds before measuring")
    ap.add_argument("--source", choices=("ndi", "pattern"), default="ndi")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--fps", type=float, default=20.0, help="source and output rate")
    ap.add_argument("--osc-rate", type=float, default=50.0, help="random valid OSC messages/s")
    ap.add_argument("--flood-pps", type=float, default=20000.0)
    ap.add_argument("--stall", type=float, default=1.5, help="seconds the render loop stalls per cycle")
    ap.add_argument("--max-gap-ms", type=float, default=None)
    ap.add_argument("--max-rss-growth-mb", type=float, default=64.0)
    ap.add_argument("--min-flood-ratio", type=float, default=0.8,
                    help="processed fps during floods vs calm seconds, at least")
    ap.add_argument("--json", default=None)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    # the root logger passes WARNING+ to the error-line collector; the console shows less unless -v
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for h in logging.getLogger().handlers:
            h.setLevel(logging.ERROR)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
