"""``streambridge doctor``: what this machine can run, with versions and what to install."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import platform
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check Python, torch, GPU, TensorRT, NDI/Spout/Syphon")
    p.set_defaults(func=run_doctor)


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
    return 1 if any(ok is False for ok, _, _ in results) else 0
