"""``streambridge presets check DIR`` and ``streambridge presets list DIR``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from bridge.yamlio import ConfigError

log = logging.getLogger("streambridge.presets")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "presets",
        help="check or list a folder of preset files",
        description="Check or list a folder of preset YAML files (format: docs/presets.md).",
    )
    actions = parser.add_subparsers(dest="presets_action", metavar="ACTION")

    check = actions.add_parser(
        "check",
        help="validate every preset file; exit 0 if all are good, 1 otherwise",
        description="Validate every *.yaml / *.yml file in DIR. Problems are logged with file, "
        "line and key. Exit status: 0 all good, 1 problems found, 2 DIR missing.",
    )
    check.add_argument("dir", metavar="DIR", type=Path, help="presets folder")
    check.set_defaults(func=_check)

    lst = actions.add_parser(
        "list",
        help="list presets with their recall index and description",
        description="List the presets in DIR in recall-index order (0-based, as /sd/preset/index "
        "uses). Files with problems are logged and the exit status is 1.",
    )
    lst.add_argument("dir", metavar="DIR", type=Path, help="presets folder")
    lst.set_defaults(func=_list)

    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _open_store(folder: Path) -> Any:
    """The loaded store, or None (logged) when the folder cannot be read."""
    from bridge.presets import PresetStore

    try:
        return PresetStore(folder)
    except ConfigError as exc:
        log.error("%s", exc)
        return None


def _check(args: argparse.Namespace) -> int:
    store = _open_store(args.dir)  # problems are logged, one line per problem, while loading
    if store is None:
        return 2
    errors = store.errors()
    n = len(store)
    if errors:
        sys.stdout.write(f"{args.dir}: {len(errors)} file(s) with problems, {n} preset(s) good\n")
        return 1
    if n == 0:
        log.warning("%s: no preset files (*.yaml, *.yml) found", args.dir)
    sys.stdout.write(f"{args.dir}: {n} preset(s), all good\n")
    return 0


def _list(args: argparse.Namespace) -> int:
    store = _open_store(args.dir)
    if store is None:
        return 2
    items = store.items()
    width = max((len(name) for name, _ in items), default=4)
    lines = []
    for i, (name, preset) in enumerate(items):
        desc = (preset.description or "").strip().replace("\n", " ")
        cold = preset.cold_values()
        if cold:
            desc += "  [" + ", ".join(f"{k}={v}" for k, v in cold.items()) + "]"
        lines.append(f"{i:3d}  {name:<{width}}  {desc}".rstrip() + "\n")
    sys.stdout.write("".join(lines))
    return 1 if store.errors() else 0
