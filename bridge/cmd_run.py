"""``streambridge run | demo | validate | sources``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.cli import CliError
from bridge.cmd_render import (
    ACCELERATION_CHOICES,
    ACCELERATION_HELP,
    add_model_args,
    parse_size,
    parse_steps,
)

if TYPE_CHECKING:
    from bridge.config import DaemonConfig

log = logging.getLogger("streambridge")

DEMO_NDI_NAME = "streambridge-demo"
DEMO_FEEDBACK = "127.0.0.1:9401"  # where the demo echoes every change (README: watch it there)


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the daemon")
    _add_run_args(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="the test pattern through a tiny generated model, no GPU or download needed")
    demo.add_argument("--duration", type=float, default=None, help="stop after S seconds (default, or 0: until Ctrl-C)")
    demo.add_argument("--model-dir", help="where the tiny model lives (made on first use)")
    demo.add_argument("--video", default="streambridge-demo.mp4", help="also write the output here ('' to skip)")
    demo.add_argument("--size", type=parse_size, default=(256, 256), help="WxH (default 256x256)")
    demo.add_argument("--fps", type=float, default=15.0)
    demo.add_argument("--osc", default="127.0.0.1:9400", help="OSC listen HOST:PORT")
    demo.add_argument("--feedback", action="append", default=None, metavar="HOST:PORT",
                      help=f"echo every change and the status here (default {DEMO_FEEDBACK}; several "
                      "allowed; '' turns it off)")
    demo.add_argument("--status", default="127.0.0.1:9480",
                      help="status and control page HOST:PORT (default 127.0.0.1:9480; '' turns it off)")
    demo.add_argument("--mix", type=float, default=0.5, help="dry/wet mix at start (default 0.5)")
    demo.add_argument("--no-ndi", action="store_true", help="do not publish over NDI")
    demo.set_defaults(func=cmd_demo)

    val = sub.add_parser("validate", help="check a config file (exit 0 if valid, 1 if not)")
    val.add_argument("file")
    val.set_defaults(func=cmd_validate)

    src = sub.add_parser("sources", help="list NDI / Spout / Syphon senders visible now")
    src.add_argument("--timeout", type=float, default=2.0)
    src.set_defaults(func=cmd_sources)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (flags override it)")
    p.add_argument("--source", help="KIND[:NAME], e.g. ndi:TD Out, spout:, syphon:Resolume, video:clip.mp4, pattern")
    p.add_argument("--sink", action="append", default=None, metavar="SPEC",
                   help="KIND[:NAME], several allowed, e.g. ndi:SD Out, spout:SD Out, video:out.mp4, null")
    add_model_args(p)
    p.add_argument("--size", type=parse_size, help="pipeline WxH")
    p.add_argument("--steps", type=parse_steps, help="t_index_list, e.g. 32,45")
    p.add_argument("--frame-buffer", type=int)
    p.add_argument("--cfg", choices=["none", "full", "self", "initialize"])
    p.add_argument("--acceleration", choices=ACCELERATION_CHOICES, help=ACCELERATION_HELP)
    p.add_argument("--fps", type=float, help="output rate (default: the source's)")
    p.add_argument("--output-size", type=parse_size, help="scale the output to WxH")
    p.add_argument("--resize", choices=["fit", "fill", "stretch"])
    p.add_argument("--no-signal", choices=["hold", "black", "slate"])
    p.add_argument("--osc", metavar="HOST:PORT", help="OSC listen address (default 127.0.0.1:9400)")
    p.add_argument("--feedback", action="append", default=None, metavar="HOST:PORT", help="OSC feedback target")
    p.add_argument("--status", metavar="HOST:PORT",
                   help="serve the status page (health, input/output preview) here, e.g. 127.0.0.1:9480")
    p.add_argument("--control", action="store_true", default=None,
                   help="also serve the control page on the status page's address (HOST:PORT/control)")
    p.add_argument("--presets", metavar="DIR", help="preset folder (default presets/)")
    p.add_argument("--preset", help="recall this preset at start-up")
    p.add_argument("--prompt")
    p.add_argument("--duration", type=float, help="stop after S seconds")
    p.add_argument("--allow-download", action="store_true",
                   help="fetch missing weights from the hub at start-up (off by default: nothing goes online; "
                   "prefer `streambridge models fetch NAME` before the show)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from bridge.io.registry import parse_sink_spec, parse_source_spec

    o: dict[str, Any] = {}
    try:
        if args.source:
            o["source"] = parse_source_spec(args.source).model_dump()
        if args.sink:
            o["sinks"] = [parse_sink_spec(s).model_dump() for s in args.sink]
    except ValueError as exc:
        raise CliError(str(exc)) from None
    simple = {
        "model": "model.model", "vae": "model.vae", "lcm_lora": "model.lcm_lora", "device": "model.device",
        "dtype": "model.dtype", "size": "pipeline.size", "steps": "pipeline.steps",
        "frame_buffer": "pipeline.frame_buffer", "cfg": "pipeline.cfg", "acceleration": "pipeline.acceleration",
        "fps": "output.fps", "output_size": "output.size", "resize": "output.resize",
        "no_signal": "output.no_signal", "osc": "osc.listen", "feedback": "osc.feedback",
        "presets": "presets.folder", "preset": "presets.initial", "prompt": "params.prompt",
        "status": "status.listen", "control": "status.control",
    }
    for attr, key in simple.items():
        value = getattr(args, attr, None)
        if value is not None:
            o[key] = list(value) if isinstance(value, tuple) and attr == "steps" else value
    return o


def build_config(args: argparse.Namespace):
    from bridge.config import apply_overrides, load_config_located
    from bridge.yamlio import ConfigError

    try:
        cfg, lines = load_config_located(args.config)
        overrides = _overrides(args)
        cfg = apply_overrides(cfg, overrides)
    except ConfigError as exc:
        raise CliError(f"invalid configuration:\n{exc}") from None
    preflight(cfg, args.config or "command line", lines, overrides,
              allow_download=bool(getattr(args, "allow_download", False)))
    return cfg


def preflight(cfg: DaemonConfig, source: str, lines: Mapping[tuple[Any, ...], int] | None = None,
              overridden: Iterable[str] = (), *, allow_download: bool = False) -> None:
    """The checks of meaning (``bridge.preflight``): every problem logged, then one CliError."""
    from bridge.preflight import check, format_problems

    problems = format_problems(check(cfg, allow_download=allow_download, ports=True), source, lines, overridden)
    if problems:
        for line in problems:
            log.error("%s", line)
        n = len(problems)
        raise CliError(f"{n} problem{'s' if n > 1 else ''} to fix before the show (listed above)", code=1)


def run_daemon(cfg, duration: float | None, options=None) -> int:
    from bridge.daemon import Daemon, StartupError

    daemon = Daemon(cfg, options)
    stop_reason: list[str] = []

    def on_signal(signum, frame) -> None:
        stop_reason.append(signal.Signals(signum).name)
        daemon.request_stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    try:
        daemon.start()
    except StartupError as exc:
        daemon.stop()
        raise CliError(str(exc), code=1) from None
    except Exception:
        daemon.stop()
        raise
    try:
        daemon.wait(duration if duration and duration > 0 else None)  # 0 / None: until stopped
    finally:
        daemon.stop()
    if stop_reason:
        log.info("stopped by %s", stop_reason[0])
    return exit_process_if_stuck(0, daemon.abandoned)


def exit_process_if_stuck(code: int, abandoned: list[str]) -> int:
    """After an orderly stop, end the process at once with ``code`` when a thread is still inside
    a backend call (``abandoned`` names them); otherwise return ``code``.

    Why: a thread that comes back from a native call while the interpreter is finalising is ended
    by CPython (3.11-3.13) with ``pthread_exit``, whose forced unwinding runs through the binding's
    ``noexcept`` GIL guard (pybind11's ``gil_scoped_release`` destructor in ndi-python): the C++
    runtime then aborts the process (``terminate called without an active exception``, exit 134).
    Everything that can be released has been by now, so the logs are flushed and ``os._exit``
    skips the finalisation that would wake that thread up. Only the command line calls this."""
    if not abandoned:
        return code
    log.warning("%s still inside a backend call after the stop; exiting without the interpreter's "
                "teardown so the native library cannot abort the process", ", ".join(abandoned))
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # flushing is best effort on the way out
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = build_config(args)  # and the checks of meaning, before torch is even imported
    from bridge.daemon import DaemonOptions

    return run_daemon(cfg, args.duration, DaemonOptions(allow_download=args.allow_download))


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.config import DaemonConfig, default_cache_dir
    from bridge.io.ndi import load_ndi

    model_dir = Path(args.model_dir) if args.model_dir else default_cache_dir() / "models" / "tiny-demo"
    if not (model_dir / "model_index.json").exists():
        from stream_core.tiny import make_tiny_model

        log.info("making the tiny demo model in %s (once)", model_dir)
        make_tiny_model(model_dir)
    w, h = args.size
    sinks: list[dict[str, Any]] = []
    if not args.no_ndi:
        try:
            load_ndi()
            sinks.append({"type": "ndi", "name": DEMO_NDI_NAME})
        except Exception as exc:  # the demo still runs without NDI, and says so
            log.warning("NDI output off: %s", exc)
    if args.video:
        sinks.append({"type": "video", "path": args.video})
    if not sinks:
        sinks.append({"type": "null"})
    feedback = [f for f in (args.feedback if args.feedback is not None else [DEMO_FEEDBACK]) if f]
    presets = Path("presets")
    data = {
        "model": {"model": str(model_dir), "device": "cpu", "dtype": "float32"},
        "pipeline": {"size": [w, h], "steps": [32, 45], "cfg": "self"},
        "source": {"type": "pattern", "width": w, "height": h, "fps": args.fps},
        "sinks": sinks,
        "output": {"fps": args.fps},
        "osc": {"listen": args.osc, "feedback": feedback},
        "status": {"listen": args.status or None, "control": bool(args.status)},
        "presets": {"folder": str(presets) if presets.is_dir() else str(_packaged_presets())},
        # the tiny model's weights are random (its output is dark noise): show the test pattern
        # through it half and half so you can see frames flow; /sd/mix 1 shows the model alone
        "params": {"mix": args.mix},
    }
    cfg = DaemonConfig.model_validate(data)
    preflight(cfg, "demo")
    log.info("demo: pattern -> tiny model -> %s; OSC on %s (try: /sd/prompt, /sd/strength, /sd/preset)",
             ", ".join(f"{s['type']}:{s.get('name') or s.get('path', '')}" for s in sinks), args.osc)
    if feedback:
        log.info("demo: every change is echoed to %s (watch it: python examples/osc_watch.py %s)",
                 ", ".join(feedback), feedback[0].rpartition(":")[2])
    else:
        log.info("demo: no feedback target (--feedback HOST:PORT to see the echo of every change)")
    return run_daemon(cfg, args.duration)


def _packaged_presets() -> Path:
    return Path(__file__).resolve().parent.parent / "presets"


def cmd_validate(args: argparse.Namespace) -> int:
    """Shape (the schema) and then meaning (``bridge.preflight``) of a config file: every problem
    at once, each with file:line; exit 0/1."""
    from bridge.config import load_config_located
    from bridge.preflight import check, format_problems
    from bridge.yamlio import ConfigError

    try:
        cfg, lines = load_config_located(args.file)
    except ConfigError as exc:
        for line in exc.problems:
            log.error("%s", line)
        return 1
    problems = format_problems(check(cfg), args.file, lines)
    for line in problems:
        log.error("%s", line)
    if problems:
        return 1
    sys.stdout.write(f"{args.file}: OK\n")
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    from bridge.io.registry import list_senders

    found = list_senders(args.timeout)
    for kind, value in found.items():
        if isinstance(value, str):
            sys.stdout.write(f"{kind}: unavailable ({value})\n")
        elif not value:
            sys.stdout.write(f"{kind}: none visible\n")
        else:
            for name in value:
                sys.stdout.write(f"{kind}:{name}\n")
    return 0

