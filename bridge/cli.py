"""``streambridge`` command line. Each sub-command lives in its own ``bridge.cmd_*`` module and is
imported only when used, so ``streambridge --help`` stays fast and a missing optional
dependency only affects the command that needs it."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from bridge import __version__

# sub-command name -> module exposing register(subparsers)
_COMMANDS: dict[str, str] = {
    "run": "bridge.cmd_run",
    "demo": "bridge.cmd_run",
    "validate": "bridge.cmd_run",
    "sources": "bridge.cmd_run",
    "doctor": "bridge.cmd_doctor",
    "render": "bridge.cmd_render",
    "models": "bridge.cmd_models",
    "presets": "bridge.cmd_presets",
    "engines": "bridge.cmd_engines",
}


class CliError(Exception):
    """A user error: printed as one line on stderr, exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streambridge",
        description="Real-time diffusion between TouchDesigner/Resolume and the GPU.",
    )
    parser.add_argument("--version", action="version", version=f"streambridge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen: set[str] = set()
    for module_name in dict.fromkeys(_COMMANDS.values()):
        if module_name in seen:
            continue
        seen.add(module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # command not present in this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from bridge.logs import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose, json_lines=args.log_json)
    stay_offline(args)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        logging.getLogger("streambridge").error("%s", exc)
        return exc.code
    except KeyboardInterrupt:
        return 130


def stay_offline(args: argparse.Namespace) -> None:
    """No command goes online unless asked: ``HF_HUB_OFFLINE=1`` for this process (set before
    huggingface_hub is imported, which reads it once) except for ``models fetch`` and ``run
    --allow-download``, or when the variable is already set either way."""
    asked = getattr(args, "allow_download", False) or getattr(args, "models_command", None) == "fetch"
    if not asked:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


if __name__ == "__main__":
    # run through the package module so CliError is the same class the commands raise
    from bridge.cli import main as _main

    sys.exit(_main())
