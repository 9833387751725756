"""``streambridge doctor``: what this machine can run, with versions and what to install.

``streambridge doctor --gpu`` adds the GPU self-test (:mod:`bridge.selftest`): the real
architecture with random weights through the whole daemon path for ``--seconds``, driven over OSC,
with PASS/FAIL and exit code 0/1."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import platform
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check Python, torch, GPU, TensorRT, NDI/Spout/Syphon; --gpu: self-test")
    p.add_argument("--gpu", action="store_true",
                   help="also run the self-test: the real model architecture (random weights, nothing downloaded) "
                        "through the daemon for --seconds with OSC changes and a preset recall; PASS/FAIL")
    g = p.add_argument_group("self-test (--gpu)")
    g.add_argument("--arch", choices=("sd-turbo", "sd15", "tiny"), default="sd-turbo",
                   help="sd-turbo (SD 2.1 U-Net), sd15, or tiny (the test model, for a CPU check)")
    g.add_argument("--device", default=None,
                   help="cuda, cuda:N, mps or cpu (default: the GPU; cpu only for --arch tiny)")
    g.add_argument("--seconds", type=float, default=20.0, help="how long the daemon runs under OSC (default 20)")
    g.add_argument("--min-fps", type=float, default=None,
                   help="fail under this processed rate (default 24 on a GPU, 1 on the CPU)")
    g.add_argument("--size", type=int, default=None, help="square pipeline size (default 512; tiny: 64)")
    g.add_argument("--steps", type=_parse_steps, default=None, help="t_index_list, e.g. 32,45 (default: the daemon's)")
    g.add_argument("--cfg", choices=("none", "full", "self", "initialize"), default=None)
    g.add_argument("--acceleration", default=None, help="as in the config (default: the daemon's default)")
    g.add_argument("--cache-dir", default=None, help="engine/compile cache folder (default: the daemon's)")
    g.add_argument("--allow-build", action="store_true", default=None,
                   help="build any missing engine at start-up (default: only auto's compile on a GPU)")
    g.add_argument("--source-fps", type=float, default=240.0, help="pattern source rate (default 240: full speed)")
    g.add_argument("--output-fps", type=float, default=60.0, help="publish rate (default 60)")
    g.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the figures as JSON here")
    p.set_defaults(func=run_doctor)


def _parse_steps(text: str) -> tuple[int, ...]:
    from bridge.cmd_render import parse_steps

    return parse_steps(text)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _line(ok: bool | None, what: str, detail: str) -> str:
    mark = {True: "ok  ", False: "MISS", None: "--  "}[ok]
    return f"[{mark}] {what:<22} {detail}"


def checks() -> list[tuple[bool | None, str, str]]:
    out: list[tuple[bool | None, str, str]] = []
    py_ok = sys.version_info >= (3, 10)
    out.append((py_ok, "python", f"{platform.python_version()} ({platform.system()} {platform.machine()})"))
    for dist in ("diffusers", "transformers", "python-osc", "pydantic", "numpy", "opencv-python-headless"):
        v = _version(dist)
        out.append((v is not None, dist, v or f'not installed: pip install "{dist}"'))
    try:
        import torch

        out.append((True, "torch", torch.__version__))
        if torch.cuda.is_available():
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            cc = ".".join(map(str, torch.cuda.get_device_capability(0)))
            out.append((True, "cuda", f"{torch.version.cuda} on {names} (compute {cc})"))
        else:
            from stream_core.models import mps_available

            why = "CPU build of torch" if torch.version.cuda is None else "no NVIDIA GPU/driver visible"
            fallback = "the pipeline runs on the Apple GPU (mps)" if mps_available() else \
                "the pipeline runs on the CPU (slow)"
            out.append((None, "cuda", f"not available ({why}); {fallback}"))
        if sys.platform == "darwin":
            from stream_core.models import mps_available

            out.append((mps_available() or None, "mps",
                        "Apple GPU available" if mps_available() else "not available (needs Apple silicon, macOS 12.3+)"))
    except ImportError:
        out.append((False, "torch", "not installed: pip install torch (before streambridge)"))
    else:
        try:
            from stream_core.accel.auto import machine_choice

            choice = machine_choice("auto")
            out.append((True, "acceleration", f"auto -> {choice.label} on {choice.device}: {choice.reason}"))
        except Exception as exc:  # doctor reports, it never crashes
            out.append((False, "acceleration", f"cannot decide what auto picks here: {exc}"))
    for mod, label, hint in (
        ("tensorrt", "tensorrt", 'pip install "streambridge[tensorrt]" (NVIDIA GPU, Linux/Windows)'),
        ("onnxruntime", "onnxruntime", 'pip install "streambridge[onnx]"'),
    ):
        try:
            m = importlib.import_module(mod)
            out.append((True, label, getattr(m, "__version__", "installed")))
        except Exception:
            out.append((None, label, f"not installed (optional): {hint}"))
    from bridge.io.base import BackendUnavailable

    try:
        from bridge.io.ndi import load_ndi

        lib = load_ndi()
        ver = lib.version() if hasattr(lib, "version") else _version("ndi-python")
        out.append((True, "ndi", f"{ver} (NDI® runtime bundled with ndi-python)"))
    except BackendUnavailable as exc:
        out.append((None, "ndi", str(exc)))
    except Exception as exc:
        out.append((False, "ndi", f"ndi-python is installed but the runtime failed: {exc}"))
    plat = sys.platform
    if plat == "win32":
        v = _version("SpoutGL")
        out.append((v is not None, "spout", v or 'not installed: pip install "streambridge[spout]"'))
    else:
        out.append((None, "spout", "Windows only"))
    if plat == "darwin":
        v = _version("syphon-python")
        out.append((v is not None, "syphon", v or 'not installed: pip install "streambridge[syphon]"'))
    else:
        out.append((None, "syphon", "macOS only"))
    v = _version("pyvirtualcam")
    out.append((v is not None if v else None, "virtualcam", v or 'optional: pip install "streambridge[virtualcam]"'))
    return out


def run_doctor(args: argparse.Namespace) -> int:
    results = checks()
    sys.stdout.write("\n".join(_line(*r) for r in results) + "\n")
    code = 1 if any(ok is False for ok, _, _ in results) else 0
    if getattr(args, "gpu", False):
        sys.stdout.flush()
        code = max(code, run_gpu_selftest(args))
    return code


def run_gpu_selftest(args: argparse.Namespace) -> int:
    from bridge.selftest import SelfTestOptions, format_report, run_selftest

    device = args.device
    if device is None:
        import torch

        from stream_core.models import mps_available

        if torch.cuda.is_available():
            device = "cuda"
        elif mps_available():
            device = "mps"
        else:  # a real architecture on the CPU takes many minutes: say so instead (tiny is the CPU check)
            device = "cpu" if args.arch == "tiny" else "cuda"
    if args.seconds <= 0:
        from bridge.cli import CliError

        raise CliError(f"--seconds should be > 0 but is {args.seconds}")
    opts = SelfTestOptions(
        arch=args.arch, device=device, seconds=args.seconds, min_fps=args.min_fps, size=args.size,
        steps=list(args.steps) if args.steps else None, cfg=args.cfg, acceleration=args.acceleration,
        cache_dir=args.cache_dir, allow_build=args.allow_build, source_fps=args.source_fps,
        output_fps=args.output_fps,
    )
    result = run_selftest(opts)
    sys.stdout.write(format_report(result) + "\n")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.as_dict(), indent=1, default=str), encoding="utf-8")
    return 0 if result.passed else 1
