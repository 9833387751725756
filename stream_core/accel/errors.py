"""Errors of the acceleration layer. Every message says what is wrong and what to do."""

from __future__ import annotations

INSTALL_HINTS: dict[str, str] = {
    "tensorrt": 'pip install "streambridge[tensorrt]"',
    "onnxruntime": 'pip install "streambridge[onnx]"',
    "onnx": 'pip install "streambridge[onnx]"',
    "onnxscript": 'pip install "streambridge[onnx]"',
}


class AccelError(RuntimeError):
    """Base class of every acceleration error."""


class BackendUnavailableError(AccelError):
    """The asked-for backend cannot run here (package missing, no CUDA, compiler missing).

    Never caught to fall back silently: the user asked for this backend.
    """


class EngineMissingError(AccelError):
    """No cached engine/ONNX for this configuration and building is not allowed."""


class EngineBuildError(AccelError):
    """Export or engine build failed (the message carries the first cause)."""


class EngineVerifyError(AccelError):
    """An exported graph or built engine does not reproduce the torch model's outputs."""


def missing_package(package: str, backend: str, exc: BaseException | None = None) -> BackendUnavailableError:
    """A :class:`BackendUnavailableError` for a missing Python package, with the install line."""
    hint = INSTALL_HINTS.get(package, f"pip install {package}")
    detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return BackendUnavailableError(
        f"acceleration '{backend}' needs the Python package '{package}', which cannot be imported"
        f"{detail}. Install it with: {hint} — or choose another backend (acceleration: none | compile"
        " | onnxruntime | tensorrt)."
    )
