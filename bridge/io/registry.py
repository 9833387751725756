"""The registry of frame backends: config unions, command-line specs, factories, discovery.

Every backend module declares a pydantic config class (``type: Literal["..."]`` key, unknown keys
forbidden, every field described and bounded) and an implementation class. Importing this module
imports every backend module but no platform library: those are imported in ``open()`` and a
missing one raises :class:`~bridge.io.base.BackendUnavailable` naming the extra to install.
There is no fallback from one backend to another.

Command-line specs are ``KIND`` or ``KIND:NAME`` (split at the first ``:``)::

    pattern  pattern:1280x720  pattern:1280x720@60  ndi:TD Out  ndi:127.0.0.1:5961
    spout:   spout:TDSyphonSpoutOut  syphon:Resolume  video:clip.mp4  video:frames/  camera:0
    (sinks)  ndi  ndi:streambridge  spout:SD Out  syphon:SD Out  video:out.mp4  virtualcam  null
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, TypeAlias

from pydantic import Field, TypeAdapter, ValidationError

from bridge.io import ndi as _ndi
from bridge.io import spout as _spout
from bridge.io import syphon as _syphon
from bridge.io._common import BackendConfig, SinkConfig, SourceConfig
from bridge.io.base import BackendUnavailable, FrameSink, FrameSource
from bridge.io.camera import CameraSource, CameraSourceConfig
from bridge.io.ndi import NdiSink, NdiSinkConfig, NdiSource, NdiSourceConfig
from bridge.io.null import NullSink, NullSinkConfig
from bridge.io.pattern import PatternSource, PatternSourceConfig
from bridge.io.spout import SpoutSink, SpoutSinkConfig, SpoutSource, SpoutSourceConfig
from bridge.io.syphon import SyphonSink, SyphonSinkConfig, SyphonSource, SyphonSourceConfig
from bridge.io.video import VideoSink, VideoSinkConfig, VideoSource, VideoSourceConfig
from bridge.io.virtualcam import VirtualCamSink, VirtualCamSinkConfig

__all__ = [
    "SOURCES",
    "SINKS",
    "AnySinkConfig",
    "AnySourceConfig",
    "BackendConfig",
    "SinkConfig",
    "SourceConfig",
    "create_sink",
    "create_source",
    "interrupt_opens",
    "list_senders",
    "parse_sink_config",
    "parse_sink_spec",
    "parse_source_config",
    "parse_source_spec",
]

log = logging.getLogger(__name__)

#: kind -> (config class, implementation class), in the order shown to users
SOURCES: dict[str, tuple[type[SourceConfig], type[FrameSource]]] = {
    "pattern": (PatternSourceConfig, PatternSource),
    "ndi": (NdiSourceConfig, NdiSource),
    "spout": (SpoutSourceConfig, SpoutSource),
    "syphon": (SyphonSourceConfig, SyphonSource),
    "video": (VideoSourceConfig, VideoSource),
    "camera": (CameraSourceConfig, CameraSource),
}
SINKS: dict[str, tuple[type[SinkConfig], type[FrameSink]]] = {
    "ndi": (NdiSinkConfig, NdiSink),
    "spout": (SpoutSinkConfig, SpoutSink),
    "syphon": (SyphonSinkConfig, SyphonSink),
    "video": (VideoSinkConfig, VideoSink),
    "virtualcam": (VirtualCamSinkConfig, VirtualCamSink),
    "null": (NullSinkConfig, NullSink),
}

AnySourceConfig: TypeAlias = Annotated[
    PatternSourceConfig
    | NdiSourceConfig
    | SpoutSourceConfig
    | SyphonSourceConfig
    | VideoSourceConfig
    | CameraSourceConfig,
    Field(discriminator="type"),
]
AnySinkConfig: TypeAlias = Annotated[
    NdiSinkConfig
    | SpoutSinkConfig
    | SyphonSinkConfig
    | VideoSinkConfig
    | VirtualCamSinkConfig
    | NullSinkConfig,
    Field(discriminator="type"),
]

_SOURCE_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnySourceConfig)
_SINK_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnySinkConfig)


def parse_source_config(data: Mapping[str, Any]) -> SourceConfig:
    """Validate a source config mapping (e.g. from YAML) picked by its ``type`` key."""
    return _SOURCE_ADAPTER.validate_python(dict(data))


def parse_sink_config(data: Mapping[str, Any]) -> SinkConfig:
    """Validate a sink config mapping (e.g. from YAML) picked by its ``type`` key."""
    return _SINK_ADAPTER.validate_python(dict(data))


# -- command-line specs --------------------------------------------------------------------------
_IPV4_PORT = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}:\d{1,5}$")
_PATTERN_ARG = re.compile(r"^(?:(\d{1,5})x(\d{1,5}))?(?:@(\d+(?:\.\d+)?))?$")


def _split_spec(spec: str, role: str, kinds: Sequence[str]) -> tuple[str, str | None]:
    valid = ", ".join(kinds)
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty {role} spec; expected KIND or KIND:NAME with KIND one of {valid}")
    kind, sep, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in kinds:
        hint = ""
        if "." in spec or "/" in spec or "\\" in spec:
            hint = f" (a file? write video:{spec.strip()})"
        raise ValueError(f"unknown {role} kind {kind!r} in {spec!r}; valid kinds: {valid}{hint}")
    return kind, (rest.strip() if sep else None)


def _pattern_source(arg: str) -> dict[str, Any]:
    m = _PATTERN_ARG.match(arg)
    if not m:
        raise ValueError(f"pattern takes WIDTHxHEIGHT and/or @FPS (e.g. 1280x720@30), got {arg!r}")
    out: dict[str, Any] = {}
    if m.group(1):
        out["width"], out["height"] = int(m.group(1)), int(m.group(2))
    if m.group(3):
        out["fps"] = float(m.group(3))
    return out


def _ndi_source(arg: str) -> dict[str, Any]:
    if not arg:
        raise ValueError("an NDI source needs a sender: ndi:NAME or ndi:IP:PORT")
    return {"address": arg} if _IPV4_PORT.match(arg) else {"name": arg}


def _camera_source(arg: str) -> dict[str, Any]:
    if not arg:
        return {}
    if not arg.isdigit():
        raise ValueError(f"camera takes a device index (camera:0), got {arg!r}")
    return {"index": int(arg)}


def _required(kind: str, what: str) -> Callable[[str], dict[str, Any]]:
    def build(arg: str) -> dict[str, Any]:
        if not arg:
            raise ValueError(f"{kind} needs {what} after the colon")
        return {"path": arg}

    return build


def _name_or_default(arg: str) -> dict[str, Any]:
    return {"name": arg} if arg else {}


def _no_argument(arg: str) -> dict[str, Any]:
    if arg:
        raise ValueError(f"null takes no argument, got {arg!r}")
    return {}


_SOURCE_SPECS: dict[str, Callable[[str], dict[str, Any]]] = {
    "pattern": _pattern_source,
    "ndi": _ndi_source,
    "spout": lambda arg: {"name": arg},  # "" = the active sender
    "syphon": lambda arg: {"name": arg},  # "" = the first server
    "video": _required("video", "a file or folder (video:clip.mp4)"),
    "camera": _camera_source,
}
_SINK_SPECS: dict[str, Callable[[str], dict[str, Any]]] = {
    "ndi": _name_or_default,
    "spout": _name_or_default,
    "syphon": _name_or_default,
    "video": _required("video", "an output file (video:out.mp4)"),
    "virtualcam": lambda arg: {"device": arg} if arg else {},
    "null": _no_argument,
}


def _build(
    spec: str, role: str, kind: str, fields: dict[str, Any], adapter: TypeAdapter[Any]
) -> Any:
    try:
        return adapter.validate_python({"type": kind, **fields})
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or kind}: {err['msg']}"
            for err in exc.errors()
        )
        raise ValueError(f"bad {role} spec {spec!r}: {reasons}") from None


def parse_source_spec(spec: str) -> SourceConfig:
    """``KIND[:NAME]`` from the command line -> a validated source config. Raises ValueError."""
    kind, arg = _split_spec(spec, "source", list(SOURCES))
    try:
        fields = _SOURCE_SPECS[kind](arg or "")
    except ValueError as exc:
        raise ValueError(f"bad source spec {spec!r}: {exc}") from None
    return _build(spec, "source", kind, fields, _SOURCE_ADAPTER)


def parse_sink_spec(spec: str) -> SinkConfig:
    """``KIND[:NAME]`` from the command line -> a validated sink config. Raises ValueError."""
    kind, arg = _split_spec(spec, "sink", list(SINKS))
    try:
        fields = _SINK_SPECS[kind](arg or "")
    except ValueError as exc:
        raise ValueError(f"bad sink spec {spec!r}: {exc}") from None
    return _build(spec, "sink", kind, fields, _SINK_ADAPTER)


# -- factories -----------------------------------------------------------------------------------
def create_source(cfg: SourceConfig | Mapping[str, Any]) -> FrameSource:
    """The (unopened) source for ``cfg``. Creating never touches a platform library."""
    if not isinstance(cfg, SourceConfig):
        cfg = parse_source_config(cfg)
    for config_cls, impl in SOURCES.values():
        if type(cfg) is config_cls:
            return impl(cfg)  # type: ignore[call-arg]
    raise TypeError(f"no source backend for {type(cfg).__name__}")


def create_sink(cfg: SinkConfig | Mapping[str, Any]) -> FrameSink:
    """The (unopened) sink for ``cfg``. Creating never touches a platform library."""
    if not isinstance(cfg, SinkConfig):
        cfg = parse_sink_config(cfg)
    for config_cls, impl in SINKS.values():
        if type(cfg) is config_cls:
            return impl(cfg)  # type: ignore[call-arg]
    raise TypeError(f"no sink backend for {type(cfg).__name__}")


def interrupt_opens() -> None:
    """Cut short every backend ``open()`` that may take seconds (NDI discovery), so that a stop
    never waits for one or leaves a thread inside a native library at exit. Thread-safe and
    process-wide: another daemon in the same process sees one failed attempt and retries."""
    _ndi.interrupt_discovery()


# -- discovery -----------------------------------------------------------------------------------
def list_senders(
    timeout: float = 2.0, *, ndi_extra_ips: Sequence[str] = ()
) -> dict[str, list[str] | str]:
    """Senders visible now, per kind (``ndi``, ``spout``, ``syphon``): a list of names to use
    in specs, or a string saying why that kind is unavailable here. NDI looks for ``timeout``
    seconds; Syphon's directory takes about as long on macOS; Spout answers at once."""
    listers: dict[str, Callable[[], list[str]]] = {
        "ndi": lambda: _ndi.list_senders(timeout, ndi_extra_ips),
        "spout": lambda: _spout.list_senders(timeout),
        "syphon": lambda: _syphon.list_senders(timeout),
    }
    out: dict[str, list[str] | str] = {}
    for kind, lister in listers.items():
        try:
            out[kind] = lister()
        except BackendUnavailable as exc:
            out[kind] = str(exc)
        except Exception as exc:  # report, never hide: the caller prints it
            log.warning("listing %s senders failed: %s", kind, exc)
            out[kind] = f"listing failed: {exc}"
    return out
