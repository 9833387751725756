"""Native libraries' own messages (FFmpeg inside OpenCV, OpenCV's ``[ WARN ]`` lines) into the log.

They are written straight to the process's file descriptor 2 by C code, around Python's logging:
OpenCV's log level (``cv2.utils.logging``) covers only OpenCV's own lines, and FFmpeg's are
reachable only through ``OPENCV_FFMPEG_LOGLEVEL`` (which silences them) or ``OPENCV_FFMPEG_DEBUG``
(which prints them, still natively). Checked with opencv-python 5.0: a truncated mp4 prints
``[mov,mp4,m4a,3gp,3g2,mj2 @ 0x...] moov atom not found`` whatever ``OPENCV_LOG_LEVEL`` says.

So the one call that can fail that way (opening a video) runs inside :func:`capture_native_stderr`,
which points descriptor 2 at a temporary file for the duration of the call and hands back the
lines, cleaned of per-run pointers, to be logged or put into the error the user sees. Our own
log handler writes to its own duplicate of descriptor 2 (``bridge.logs``), so log lines of other
threads are not caught meanwhile.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_lock = threading.Lock()
# "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5564...] moov atom not found" -> "mov,mp4,...: moov atom not found"
_FFMPEG_PREFIX = re.compile(r"^\[([^\]@]+?)\s*@\s*0x[0-9a-fA-F]+\]\s*")
_OPENCV_PREFIX = re.compile(r"^\[\s*(WARN|ERROR|INFO)\s*:\s*[\d@.]+\]\s*(global\s+)?")


def clean_line(line: str) -> str:
    """Drop what changes from run to run (object addresses, timestamps), keep the message."""
    line = line.strip()
    line = _FFMPEG_PREFIX.sub(lambda m: f"FFmpeg ({m.group(1).split(',')[0]}): ", line)
    return _OPENCV_PREFIX.sub(lambda m: f"OpenCV {m.group(1).lower()}: ", line)


@contextmanager
def capture_native_stderr(into: list[str]) -> Iterator[list[str]]:
    """Collect what native code writes to descriptor 2 during the block into ``into`` (cleaned,
    one entry per non-empty line). One capture at a time; a no-op where descriptor 2 cannot be
    redirected."""
    with _lock:
        try:
            sys.stderr.flush()
        except Exception:  # a closed or odd stderr: nothing to flush
            pass
        try:
            saved = os.dup(2)
        except OSError:
            yield into
            return
        with tempfile.TemporaryFile() as tmp:
            try:
                os.dup2(tmp.fileno(), 2)
                yield into
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                text = tmp.read().decode("utf-8", errors="replace")
        into.extend(clean for clean in (clean_line(line) for line in text.splitlines()) if clean)
