"""Safe YAML loading with line numbers, and pydantic validation errors a person can act on.

* ``yaml.safe_load`` semantics, but aliases/anchors are refused (the "billion laughs" preset) and
  files above a size cap are refused before parsing.
* Every mapping key and sequence item remembers its line, so a validation error reads
  ``presets/neon.yaml:7: key 'guidance': Input should be less than or equal to 20 (got 35)``.
* Atomic writes: temp file in the same folder, flush + fsync, ``os.replace``, fsync the folder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

MAX_YAML_BYTES = 256 * 1024

M = TypeVar("M", bound=BaseModel)

PathKey = tuple[Any, ...]


class ConfigError(ValueError):
    """A config/preset file that cannot be used. ``str()`` is the user-facing message."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases outright."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in StreamBridge files", event.start_mark
            )
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise yaml.composer.ComposerError(
                None, None, f"anchors (&{anchor}) are not allowed in StreamBridge files", event.start_mark
            )
        return super().compose_node(parent, index)


def _line_map(node: yaml.Node, path: PathKey, out: dict[PathKey, int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _line_map(value_node, (*path, key), out)
            # keep the key's own line for the key path
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*path, i), out)


def load_yaml_text(text: str, source: str = "<string>") -> tuple[Any, dict[PathKey, int]]:
    """Parse YAML text safely. Returns (data, {key path: line})."""
    if len(text.encode("utf-8", errors="replace")) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: file is larger than {MAX_YAML_BYTES // 1024} KiB; refusing to parse it")
    loader = _NoAliasLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{source}{line}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    lines: dict[PathKey, int] = {}
    _line_map(node, (), lines)
    return data, lines


def read_yaml_file(path: str | os.PathLike[str]) -> tuple[Any, dict[PathKey, int]]:
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{p}: file is {size} bytes, over the {MAX_YAML_BYTES // 1024} KiB cap; refusing to parse it")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    return load_yaml_text(text, str(p))


def _short(value: Any, limit: int = 60) -> str:
    s = repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def format_validation_error(
    exc: ValidationError, source: str, lines: Mapping[PathKey, int] | None = None
) -> list[str]:
    """One line per problem: ``file:line: key 'a.b': message (got value)``."""
    lines = lines or {}
    out = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        # drop pydantic's union/tagged-union discriminator parts that are not YAML keys
        # (and the "[key]" marker of a bad mapping key: the key itself is the last part)
        yaml_loc = tuple(p for p in loc if not (isinstance(p, str) and (p.startswith("function-") or p == "[key]")))
        line = None
        probe = yaml_loc
        while probe and line is None:
            line = lines.get(probe)
            probe = probe[:-1]
        if line is None:
            line = lines.get(())
        key = ".".join(str(p) for p in yaml_loc) or "(top level)"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key (check the spelling; see the docs for the allowed keys)"
        got = err.get("input")
        got_s = "" if err.get("type") == "missing" else f" (got {_short(got)})"
        where = f"{source}:{line}" if line else source
        out.append(f"{where}: key '{key}': {msg}{got_s}")
    return out


def validate(model: type[M], data: Any, source: str, lines: Mapping[PathKey, int] | None = None) -> M:
    """Validate parsed YAML against ``model``; raise :class:`ConfigError` with located messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = format_validation_error(exc, source, lines)
        raise ConfigError("\n".join(problems), problems) from None


def load_model_file(model: type[M], path: str | os.PathLike[str]) -> M:
    """Read, parse and validate one YAML file into ``model``."""
    data, lines = read_yaml_file(path)
    return validate(model, data, str(path), lines)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + fsync + replace + folder fsync)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if os.name == "posix":
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
