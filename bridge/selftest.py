"""``streambridge doctor --gpu``: the daemon's whole path, end to end, on this machine's GPU.

Builds the real architecture (sd-turbo or SD1.5) with random weights (speed does not depend on
the weight values, and nothing is downloaded), then runs the daemon in this process: a pattern
source at a high rate -> the pipeline -> a null sink, with the OSC server on a free loopback port
and a client that sends real UDP OSC the way a show does (strength, guidance, prompt, seed and
prompt crossfaders, a preset recall with a transition, a cut recall) while it reads the feedback.

It fails on any ERROR log line or traceback (any thread), any ``/sd/error`` reply, any render
error, feedback that never confirms a change (a recall whose morph never ends, for one), and a
processed rate under ``--min-fps``. WARNING lines are listed but do not fail the test.
"""

from __future__ import annotations

import logging
import math
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("streambridge.selftest")

ARCH_CHOICES: tuple[str, ...] = ("sd-turbo", "sd15", "tiny")

# the two presets of the test: A is recalled as a cut, B with a transition (a morph of the
# embeddings, the seed noise, guidance, delta and strength, frame by frame)
PRESET_A: dict[str, Any] = {"prompt": "self-test preset A, a quiet blue room", "negative_prompt": "blurry",
                            "strength": 0.55, "guidance": 1.2, "delta": 1.0, "seed": 11, "transition": 0.0}
PRESET_B: dict[str, Any] = {"prompt": "self-test preset B, a neon city at night", "negative_prompt": "text",
                            "strength": 0.7, "guidance": 1.7, "delta": 0.8, "seed": 4242}
# fader values the client sends; none equals preset B's guidance, so B's echo marks its morph's end
GUIDANCE_STEPS: tuple[float, ...] = (1.0, 1.3, 1.5, 2.0)
STRENGTH_STEPS: tuple[float, ...] = (0.45, 0.6, 0.75)


@dataclass
class SelfTestOptions:
    arch: str = "sd-turbo"
    device: str = "cuda"
    seconds: float = 20.0
    min_fps: float | None = None  # None: 24 on a GPU, 1 on the CPU
    size: int | None = None  # None: 512 for the real architectures, 64 for tiny
    steps: list[int] | None = None  # None: the daemon's default
    cfg: str | None = None
    acceleration: str | None = None  # None: the daemon's default
    cache_dir: str | None = None
    allow_build: bool | None = None
    source_fps: float = 240.0
    output_fps: float = 60.0
    startup_timeout: float = 600.0


@dataclass
class SelfTestResult:
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)  # WARNING and above, in order
    osc_errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failures": self.failures, "figures": self.figures,
                "log_lines": self.log_lines, "osc_errors": self.osc_errors}


# ---------------------------------------------------------------------------- capture
class _LogCapture(logging.Handler):
    """Every WARNING+ record from any logger and thread while installed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)

    def lines(self) -> list[str]:
        with self._lock2:
            recs = list(self.records)
        out = []
        for r in recs:
            try:
                msg = r.getMessage()
            except Exception:  # a malformed record is still a line to show
                msg = str(r.msg)
            line = f"{r.levelname} {r.name} [{r.threadName}]: {msg}"
            if r.exc_info and r.exc_info[1] is not None:
                line += f" (traceback: {type(r.exc_info[1]).__name__}: {r.exc_info[1]})"
            out.append(line)
        return out

    def failing(self) -> list[logging.LogRecord]:
        with self._lock2:
            return [r for r in self.records if r.levelno >= logging.ERROR or r.exc_info or r.exc_text
                    or "Traceback (most recent call last)" in str(r.msg)]


class _Feedback:
    """A UDP socket that records every OSC message the daemon sends back."""

    def __init__(self) -> None:
        from bridge.control.codec import decode_packet, iter_messages

        self._decode, self._iter = decode_packet, iter_messages
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.messages: list[tuple[float, str, tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="selftest-feedback", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            try:
                msgs = self._iter(self._decode(data))
            except ValueError:
                continue
            with self._lock:
                for m in msgs:
                    self.messages.append((time.monotonic(), m.address, tuple(m.args)))

    def values(self, address: str, since: float = 0.0) -> list[tuple[Any, ...]]:
        with self._lock:
            return [a for t, addr, a in self.messages if addr == address and t >= since]

    def wait_for(self, address: str, pred: Any, timeout: float, since: float = 0.0) -> bool:
        end = time.monotonic() + timeout
        while True:
            if any(pred(a) for a in self.values(address, since)):
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        self.sock.close()


class _Client:
    def __init__(self, address: tuple[str, int]) -> None:
        from bridge.control.codec import encode_message

        self._encode = encode_message
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sent = 0

    def send(self, address: str, *args: Any) -> None:
        self.sock.sendto(self._encode(address, *args), self.address)
        self.sent += 1

    def close(self) -> None:
        self.sock.close()


def tensors_off_device(obj: Any, device: Any, prefix: str) -> list[str]:
    """Names of the tensors ``obj`` holds (attributes, and one level of dicts, lists and
    dataclasses in them) that are not on ``device``: the pipeline's and the live controller's state
    should all live on the pipeline's device."""
    import dataclasses

    import torch

    device = torch.device(device)

    def same(t: torch.Tensor) -> bool:
        return t.device.type == device.type and (device.index is None or t.device.index in (None, device.index))

    bad = []
    for name, value in list(vars(obj).items()):
        items: list[tuple[str, Any]] = [(name, value)]
        if isinstance(value, dict):
            items = [(f"{name}[{k!r}]", v) for k, v in list(value.items())]
        elif isinstance(value, (list, tuple)):
            items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            items = [(f"{name}.{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value)]
        for label, v in items:
            if isinstance(v, torch.Tensor) and not same(v):
                bad.append(f"{prefix}.{label} on {v.device}")
    return bad


# ---------------------------------------------------------------------------- the test
def _near(x: Any, y: float) -> bool:
    return isinstance(x, (int, float)) and math.isclose(float(x), y, abs_tol=1e-4)


def _write_presets(folder: Path, transition: float) -> None:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "selftest-a.yaml").write_text(yaml.safe_dump(PRESET_A), encoding="utf-8")
    (folder / "selftest-b.yaml").write_text(yaml.safe_dump({**PRESET_B, "transition": transition}), encoding="utf-8")


def _drive(client: _Client, fb: _Feedback, seconds: float, transition: float, result: SelfTestResult,
           stop: threading.Event) -> None:
    """The show: faders and crossfaders, a recall with a transition, a cut recall; checks feedback."""
    t0 = time.monotonic()
    fail = result.failures
    recall_at, cut_at = 0.3 * seconds, 0.85 * seconds

    def until(t_rel: float) -> bool:
        while time.monotonic() - t0 < t_rel:
            if stop.is_set():
                return False
            time.sleep(min(0.01, max(0.0, t_rel - (time.monotonic() - t0))))
        return not stop.is_set()

    # 1. faders every 100 ms: strength, guidance, prompt, seed, seed and prompt crossfaders
    k = 0
    client.send("/sd/seed/b", 77)
    client.send("/sd/prompt/b", "self-test crossfade target, molten gold")
    while time.monotonic() - t0 < recall_at - 0.1 and not stop.is_set():
        step = k % 6
        if step == 0:
            client.send("/sd/strength", STRENGTH_STEPS[k // 6 % len(STRENGTH_STEPS)])
        elif step == 1:
            client.send("/sd/guidance", GUIDANCE_STEPS[k // 6 % len(GUIDANCE_STEPS)])
        elif step == 2:
            client.send("/sd/prompt", f"self-test prompt {k // 6}, ink and light")
        elif step == 3:
            client.send("/sd/seed", 100 + k)
        elif step == 4:
            client.send("/sd/seed/mix", round(0.1 + 0.8 * ((k // 6) % 5) / 4, 3))
        else:
            client.send("/sd/prompt/mix", round(0.9 - 0.8 * ((k // 6) % 5) / 4, 3))
        k += 1
        until(time.monotonic() - t0 + 0.1)
    if stop.is_set():
        return
    for address in ("/sd/strength", "/sd/guidance", "/sd/prompt", "/sd/seed", "/sd/seed/mix", "/sd/prompt/mix"):
        if k >= 6 and not fb.wait_for(address, lambda a: True, 2.0):
            fail.append(f"no feedback echo for {address} after sending it")
    # 2. the preset recall with a transition: embeddings, seed noise and floats morph per frame
    until(recall_at)
    client.send("/sd/seed/mix", 0.0)
    client.send("/sd/prompt/mix", 0.0)
    client.send("/sd/prompt/b", "")
    time.sleep(0.15)
    t_recall = time.monotonic()
    client.send("/sd/preset", "selftest-b")
    if not fb.wait_for("/sd/status/preset", lambda a: a and a[0] == "selftest-b", 5.0, since=t_recall):
        fail.append("the recall of preset selftest-b was not confirmed (/sd/status/preset)")
    while time.monotonic() - t_recall < transition and not stop.is_set():
        client.send("/sd/state")  # reads every value back while the morph runs
        time.sleep(0.25)
    done = fb.wait_for("/sd/guidance", lambda a: a and _near(a[0], PRESET_B["guidance"]),
                       max(3.0, transition), since=t_recall)
    seeded = fb.wait_for("/sd/seed", lambda a: a and a[0] == PRESET_B["seed"], 1.0, since=t_recall)
    if not (done and seeded):
        fail.append(f"the recall of preset selftest-b with a {transition:.1f} s transition did not finish: no "
                    f"/sd/guidance {PRESET_B['guidance']} and /sd/seed {PRESET_B['seed']} echo within "
                    f"{max(3.0, transition):.1f} s of its end")
    # 3. faders again, then a cut recall by index (sorted names: 0 = selftest-a)
    while time.monotonic() - t0 < cut_at and not stop.is_set():
        client.send("/sd/strength", STRENGTH_STEPS[k % len(STRENGTH_STEPS)])
        client.send("/sd/guidance", GUIDANCE_STEPS[k % len(GUIDANCE_STEPS)])
        k += 1
        time.sleep(0.1)
    t_cut = time.monotonic()
    client.send("/sd/preset", 0)
    if not fb.wait_for("/sd/guidance", lambda a: a and _near(a[0], PRESET_A["guidance"]), 3.0, since=t_cut):
        fail.append("the cut recall of preset selftest-a (by index) was not echoed (/sd/guidance)")
    until(seconds)


def _figures_from_daemon(daemon: Any) -> dict[str, Any]:
    runner = daemon.engine.runner if daemon.engine is not None else None
    accel: dict[str, Any] = {"configured": daemon.cfg.pipeline.acceleration,
                             "runner": type(runner).__name__ if runner is not None else None}
    for attr in ("acceleration", "chosen", "backend"):  # whatever the runner/engine says it picked
        for obj in (daemon.engine, runner):
            value = getattr(obj, attr, None)
            if isinstance(value, str) and value:
                accel.setdefault("chosen", value)
    chosen = getattr(daemon.engine, "acceleration_info", None)  # what auto (or the config) picked, and why
    if isinstance(chosen, dict):
        accel["chosen"] = str(chosen.get("backend")) + (f" ({chosen['compile_mode']})" if chosen.get("compile_mode") else "")
        accel["reason"] = str(chosen.get("reason", ""))
    info = getattr(runner, "info", None)
    if isinstance(info, dict):
        accel["info"] = {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    return {"acceleration": accel}


def run_selftest(opts: SelfTestOptions) -> SelfTestResult:
    """Build, run and check; never raises for a failure of the machine (that is a FAIL)."""
    import torch

    result = SelfTestResult()
    fig = result.figures
    device = torch.device(opts.device)
    fig.update(arch=opts.arch, device=str(device), seconds=opts.seconds, torch=torch.__version__)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            result.failures.append("--device cuda, but torch sees no CUDA GPU "
                                   f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                                   "a CPU check of the daemon path: --arch tiny --device cpu")
            return result
        fig["gpu"] = torch.cuda.get_device_name(device)
        fig["cuda"] = torch.version.cuda
        torch.cuda.reset_peak_memory_stats(device)
    min_fps = opts.min_fps if opts.min_fps is not None else (24.0 if device.type != "cpu" else 1.0)
    size = opts.size or (64 if opts.arch == "tiny" else 512)
    dtype_name = "float32" if device.type == "cpu" else "float16"
    transition = float(min(4.0, max(0.5, 0.2 * opts.seconds)))
    fig.update(size=size, dtype=dtype_name, min_fps=min_fps, transition_s=transition)

    capture = _LogCapture()
    root = logging.getLogger()
    root_level = root.level
    if root_level > logging.WARNING:  # a quiet CLI must not hide the run's errors from the check
        root.setLevel(logging.WARNING)
    root.addHandler(capture)
    thread_errors: list[str] = []
    old_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        thread_errors.append(f"uncaught {args.exc_type.__name__} in thread "
                             f"{getattr(args.thread, 'name', '?')}: {args.exc_value}")
        old_hook(args)

    threading.excepthook = hook
    try:
        with tempfile.TemporaryDirectory(prefix="sb-selftest-") as tmp:
            _run_in(opts, Path(tmp), device, dtype_name, size, transition, result)
    except Exception as exc:  # the self-test reports, it does not crash
        log.exception("self-test failed")
        result.failures.append(f"self-test aborted: {type(exc).__name__}: {exc}")
    finally:
        if device.type == "cuda" and torch.cuda.is_available():
            fig["peak_vram_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        else:
            fig["peak_vram_gib"] = None
        root.removeHandler(capture)
        root.setLevel(root_level)
        threading.excepthook = old_hook

    result.log_lines = capture.lines() + thread_errors
    bad = capture.failing()
    if bad:
        result.failures.append(f"{len(bad)} error line(s) or traceback(s) logged during the run")
    if thread_errors:
        result.failures.append(f"{len(thread_errors)} uncaught exception(s) in threads")
    if result.osc_errors:
        result.failures.append(f"{len(result.osc_errors)} /sd/error repl(ies) to valid OSC messages")
    if fig.get("render_errors"):
        result.failures.append(f"{fig['render_errors']} render error(s)")
    fps = fig.get("processed_fps")
    if fps is not None and fps < min_fps:
        result.failures.append(f"processed {fps:.1f} fps, under --min-fps {min_fps:g}")
    result.passed = not result.failures and fps is not None
    return result


class _Abort(Exception):
    """Stops the run early; the reason is already in the result's failures."""


def _run_in(opts: SelfTestOptions, tmpdir: Path, device: Any, dtype_name: str, size: int, transition: float,
            result: SelfTestResult) -> None:
    import torch

    fig = result.figures
    fb: _Feedback | None = None
    client: _Client | None = None
    daemon = None
    stop = threading.Event()
    try:
        _write_presets(tmpdir / "presets", transition)
        t_build = time.perf_counter()
        components = None
        if opts.arch == "tiny":
            from stream_core.tiny import make_tiny_model

            model = str(make_tiny_model(tmpdir / "tiny-model"))
        else:
            from stream_core.archs import build_random_components

            model = f"random:{opts.arch}"
            components = build_random_components(opts.arch, device, getattr(torch, dtype_name), tmpdir / "tok")
        build_s = time.perf_counter() - t_build
        fb = _Feedback()
        cfg = _config(opts, model, size, dtype_name, tmpdir / "presets", fb.port)
        fig["steps"] = list(cfg.pipeline.steps)
        fig["cfg"] = cfg.pipeline.cfg
        from bridge.daemon import Daemon, DaemonOptions, StartupError

        daemon = Daemon(cfg, DaemonOptions(prewarm_timeout=60.0, components=components))
        t_start = time.perf_counter()
        try:
            daemon.start()
        except StartupError as exc:
            result.failures.append(f"start-up failed: {exc}")
            raise _Abort from None
        deadline = time.monotonic() + opts.startup_timeout
        while daemon.frames_rendered == 0 and time.monotonic() < deadline and daemon.render_errors == 0:
            time.sleep(0.01)
        startup_s = time.perf_counter() - t_start
        fig.update(model_build_s=round(build_s, 2), startup_s=round(startup_s, 2))
        fig.update(_figures_from_daemon(daemon))
        if daemon.frames_rendered == 0:
            result.failures.append(f"no frame processed within {opts.startup_timeout:.0f} s of start-up")
            raise _Abort
        m = daemon.metrics
        p0, o0, t0 = m.counter("processed"), m.counter("published"), time.perf_counter()
        client = _Client(daemon.osc.address)
        driver = threading.Thread(target=_drive, args=(client, fb, opts.seconds, transition, result, stop),
                                  name="selftest-osc", daemon=True)
        driver.start()
        driver.join(opts.seconds + 30.0)
        if driver.is_alive():
            stop.set()
            driver.join(5.0)
            result.failures.append("the OSC client did not finish (the daemon stopped answering?)")
        window = time.perf_counter() - t0
        p1, o1 = m.counter("processed"), m.counter("published")
        lat = m.latency("end_to_end").snapshot()
        fig.update(
            window_s=round(window, 2), frames_processed=p1 - p0,
            processed_fps=round((p1 - p0) / window, 2), output_fps=round((o1 - o0) / window, 2),
            output_fps_target=opts.output_fps, latency_p50_ms=lat.get("p50_ms"), latency_p95_ms=lat.get("p95_ms"),
            osc_messages_sent=client.sent, render_errors=daemon.render_errors,
        )
    except _Abort:
        pass
    finally:
        stop.set()
        if daemon is not None:
            try:
                daemon.stop()
            except Exception as exc:
                log.exception("stopping the daemon failed")
                result.failures.append(f"stopping the daemon failed: {exc}")
            if daemon.engine is not None:  # threads joined: the state can be read now
                pipe = daemon.engine.pipeline
                off = tensors_off_device(pipe, pipe.device, "pipeline")
                if daemon.controller is not None:
                    off += tensors_off_device(daemon.controller, pipe.device, "controller")
                fig["tensors_off_device"] = off
        if client is not None:
            client.close()
        if fb is not None:
            result.osc_errors = [" ".join(str(x) for x in a) for a in fb.values("/sd/error")]
            fb.close()


def _config(opts: SelfTestOptions, model: str, size: int, dtype: str, presets: Path, fb_port: int) -> Any:
    from bridge.config import DaemonConfig

    pipeline: dict[str, Any] = {"size": [size, size], "allow_build": opts.allow_build}
    if opts.steps:
        pipeline["steps"] = list(opts.steps)
    if opts.cfg:
        pipeline["cfg"] = opts.cfg
    if opts.acceleration:
        pipeline["acceleration"] = opts.acceleration
    if opts.cache_dir:
        pipeline["engine_cache"] = opts.cache_dir
    data = {
        "model": {"model": model, "device": opts.device, "dtype": dtype, "lcm_lora": "none"},
        "pipeline": pipeline,
        "source": {"type": "pattern", "width": size, "height": size, "fps": opts.source_fps},
        "sinks": [{"type": "null"}],
        "output": {"fps": opts.output_fps},
        "osc": {"listen": "127.0.0.1:0", "feedback": [f"127.0.0.1:{fb_port}"], "status_rate": 4},
        "presets": {"folder": str(presets)},
    }
    return DaemonConfig.model_validate(data)


def format_report(result: SelfTestResult) -> str:
    f = result.figures
    acc = f.get("acceleration") or {}

    def val(key: str, fmt: str = "{}", unit: str = "") -> str:
        v = f.get(key)
        return "-" if v is None else fmt.format(v) + unit

    chosen = acc.get("chosen") or acc.get("configured", "-")
    lines = [
        f"GPU self-test: {f.get('arch')} on {f.get('gpu') or f.get('device')} ({f.get('dtype', '-')}, "
        f"{val('size')}x{val('size')}, steps {f.get('steps', '-')}, cfg {f.get('cfg', '-')})",
        f"  acceleration      {chosen} (configured {acc.get('configured', '-')}, runner {acc.get('runner', '-')})",
        f"  model build       {val('model_build_s', '{:.1f}', ' s')} (random weights)",
        f"  start-up          {val('startup_s', '{:.1f}', ' s')} (daemon start to first processed frame)",
        f"  processed         {val('processed_fps', '{:.1f}', ' fps')} (minimum {val('min_fps', '{:g}')})",
        f"  output            {val('output_fps', '{:.1f}', ' fps')} (target {val('output_fps_target', '{:g}')})",
        f"  latency           p50 {val('latency_p50_ms', '{:.1f}', ' ms')}, p95 {val('latency_p95_ms', '{:.1f}', ' ms')}",
        f"  peak VRAM         {val('peak_vram_gib', '{:.2f}', ' GiB')}",
        f"  tensors elsewhere {', '.join(f['tensors_off_device']) or 'none'} (off the pipeline's device)"
        if f.get("tensors_off_device") is not None else "  tensors elsewhere -",
        f"  OSC               {val('osc_messages_sent')} messages sent over {val('window_s', '{:.1f}', ' s')}, "
        f"preset recall with a {val('transition_s', '{:.1f}', ' s')} transition",
    ]
    if result.log_lines:
        counts: dict[str, int] = {}
        for x in result.log_lines:  # the same line repeated (a failing tick every frame) shows once
            counts[x] = counts.get(x, 0) + 1
        lines.append(f"  log lines (WARNING and above): {len(result.log_lines)}, {len(counts)} different")
        shown = list(counts.items())[:50]
        lines += [f"    {x}" + (f"  [x{n}]" if n > 1 else "") for x, n in shown]
        if len(counts) > len(shown):
            lines.append(f"    ... and {len(counts) - len(shown)} more different lines")
    for e in result.osc_errors[:20]:
        lines.append(f"  /sd/error {e}")
    for failure in result.failures:
        lines.append(f"  FAIL: {failure}")
    lines.append("PASS" if result.passed else "FAIL")
    return "\n".join(lines)
