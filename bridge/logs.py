"""Logging set-up: human-readable by default, one JSON object per line with ``--log-json``."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


_own_stderr: TextIO | None = None


def log_stream() -> TextIO:
    """Where log lines go: the process's stderr, through a duplicate of its descriptor when it
    has one, so a brief redirect of descriptor 2 to catch a native library's messages
    (``bridge.io.native_log``) never catches our own log lines."""
    global _own_stderr
    try:
        if sys.stderr.fileno() != 2:
            return sys.stderr
    except (AttributeError, OSError, ValueError):  # replaced by a test harness, or closed
        return sys.stderr
    if _own_stderr is None:
        try:
            _own_stderr = open(os.dup(2), "w", encoding=sys.stderr.encoding or "utf-8",
                               errors="backslashreplace", buffering=1)
        except OSError:
            return sys.stderr
    return _own_stderr


def setup_logging(verbose: bool = False, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(log_stream())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        fmt.converter = time.localtime
        handler.setFormatter(fmt)
    handler._streambridge = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for h in list(root.handlers):  # replace our own handler only (keep e.g. pytest's)
        if getattr(h, "_streambridge", False):
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # third-party chatter
    for noisy in ("urllib3", "PIL", "diffusers", "transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
