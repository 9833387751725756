"""Video files through OpenCV (FFmpeg): a looping file / image-folder source and a file writer sink.

The source paces itself to the file's frame rate (or the configured one) through ``read(timeout)``
like the test pattern, decoding the next image *before* waiting so decode time does not add to
the frame's age. Frames are BGR, as OpenCV decodes them. Image folders play in natural name order
(``f2.png`` before ``f10.png``); images of different sizes are passed on as they are (the runtime
resizes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from bridge.io._common import FrameClock, SinkConfig, SourceConfig, as_rgb, natural_key
from bridge.io.base import Frame, FrameError, FrameSink, FrameSource, PixelFormat, SourceGone
from bridge.io.native_log import capture_native_stderr

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
_DEFAULT_FPS = 30.0
_MAX_FILE_FPS = 240.0


def _decode_image(path: Path) -> np.ndarray | None:
    """Read an image as 8-bit BGR (``np.fromfile`` + ``imdecode`` also handles non-ASCII paths
    on Windows, which ``cv2.imread`` does not)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        log.warning("cannot read image %s: %s", path, exc)
        return None
    if data.size == 0:
        return None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        return None
    return img


class VideoSourceConfig(SourceConfig):
    """Play a video file, or a folder of images, in a loop."""

    type: Literal["video"] = "video"
    path: str = Field(
        ...,
        min_length=1,
        max_length=4096,
        description="A video file (anything FFmpeg reads) or a folder of images "
        "(png/jpg/bmp/tif/webp, played in natural name order).",
    )
    fps: float | None = Field(
        None,
        gt=0,
        le=240,
        description="Playback rate. Default: the file's own rate (30 for image folders and "
        "files that do not say).",
    )


class VideoSource(FrameSource):
    kind = "video"

    def __init__(
        self,
        cfg: VideoSourceConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        self._clock_fn = clock
        self._sleep = sleep
        self._cap: Any = None
        self._files: list[Path] = []
        self._index = 0
        self._fps = _DEFAULT_FPS
        self._frame_clock: FrameClock | None = None
        self._pending: np.ndarray | None = None
        self._seq = 0
        self.loops = 0

    def open(self) -> None:
        path = Path(self.cfg.path).expanduser()
        if path.is_dir():
            self._files = sorted(
                (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                key=lambda p: natural_key(p.name),
            )
            if not self._files:
                raise SourceGone(
                    f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}"
                )
            self._index = 0
            native: list[str] = []
            with capture_native_stderr(native):
                first = self._first_folder_image()
            for line in native:
                log.warning("image-folder source %s: %s", path, line)
            if first is None:
                said = f" ({native[-1]})" if native else ""
                raise SourceGone(
                    f"none of the {len(self._files)} images in folder {path} can be decoded{said}"
                )
            self._fps = self.cfg.fps or _DEFAULT_FPS
            log.info(
                "image-folder source %s: %d images @ %g fps", path, len(self._files), self._fps
            )
        elif path.is_file():
            native = []
            with capture_native_stderr(native):
                cap = cv2.VideoCapture(str(path))
                ok, first = cap.read() if cap.isOpened() else (False, None)
            if not ok or first is None:
                cap.release()
                why = "; ".join(dict.fromkeys(native)) or (
                    "no frame could be decoded" if cap.isOpened() else "not a video OpenCV can read"
                )
                raise SourceGone(f"cannot open video file {path}: {why}")
            for line in native:
                log.warning("video source %s: %s", path, line)
            self._cap = cap
            file_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            if self.cfg.fps:
                self._fps = self.cfg.fps
            elif 0.0 < file_fps <= _MAX_FILE_FPS:
                self._fps = file_fps
            else:
                self._fps = _DEFAULT_FPS
                log.warning(
                    "%s does not give a usable frame rate (%r); playing at %g fps",
                    path,
                    file_fps,
                    self._fps,
                )
            log.info("video source %s @ %g fps", path, self._fps)
        else:
            raise SourceGone(f"video path {path} does not exist")
        self._seq = 0
        self._pending = first  # checked above: the first read() delivers it
        self.loops = 0
        self._frame_clock = FrameClock(self._fps, self._clock_fn, self._sleep)

    def _next_video_frame(self) -> np.ndarray:
        cap = self._cap
        ok, img = cap.read()
        if not ok:
            # end of file: rewind; some containers cannot seek, so reopen if that fails
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, img = cap.read()
            if not ok:
                cap.release()
                cap = self._cap = cv2.VideoCapture(str(Path(self.cfg.path).expanduser()))
                ok, img = cap.read() if cap.isOpened() else (False, None)
            if not ok:
                raise SourceGone(f"video file {self.cfg.path} yields no frames")
            self.loops += 1
        if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise SourceGone(f"video file {self.cfg.path} decoded to an unusable frame")
        return img

    def _first_folder_image(self) -> np.ndarray | None:
        """The first decodable image, from the start of the folder (quietly: open() reports)."""
        for i, path in enumerate(self._files):
            img = _decode_image(path)
            if img is not None:
                self._index = (i + 1) % len(self._files)
                return img
        return None

    def _next_folder_image(self) -> np.ndarray:
        for _ in range(len(self._files)):
            path = self._files[self._index]
            self._index += 1
            if self._index >= len(self._files):
                self._index = 0
                self.loops += 1
            img = _decode_image(path)
            if img is not None:
                return img
            log.warning("skipping unreadable image %s", path)
        raise SourceGone(f"no readable images in folder {self.cfg.path}")

    def read(self, timeout: float) -> Frame | None:
        if self._frame_clock is None:
            raise RuntimeError("VideoSource.read() called before open()")
        if self._pending is None:
            self._pending = (
                self._next_video_frame() if self._cap is not None else (self._next_folder_image())
            )
        if not self._frame_clock.wait(timeout):
            return None
        data, self._pending = self._pending, None
        seq = self._seq
        self._seq += 1
        return Frame(data=data, fmt=PixelFormat.BGR, seq=seq, t_capture=self._clock_fn())

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()
        self._frame_clock = None
        self._pending = None

    @property
    def nominal_fps(self) -> float | None:
        return self._fps

    def describe(self) -> str:
        return f"video:{self.cfg.path}"


# -- sink ----------------------------------------------------------------------------------------
_CODEC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


class VideoSinkConfig(SinkConfig):
    """Record the output to a video file with OpenCV (FFmpeg)."""

    type: Literal["video"] = "video"
    path: str = Field(
        ...,
        min_length=1,
        max_length=4096,
        description="Output file: .mp4/.m4v/.mov/.mkv (mp4v) or .avi (MJPG). Overwritten at start; "
        "a recording that has to be re-opened (sink error, output size change) continues in "
        "NAME-001.ext, NAME-002.ext, ... (existing files are skipped, never truncated).",
    )
    codec: str | None = Field(
        None,
        max_length=4,
        pattern=r"^[A-Za-z0-9 ]{4}$",
        description="FourCC overriding the codec chosen from the file extension.",
    )

    @field_validator("path")
    @classmethod
    def _known_suffix(cls, value: str) -> str:
        suffix = Path(value).suffix.lower()
        if suffix not in _CODEC_BY_SUFFIX:
            raise ValueError(
                f"video output must end with one of {', '.join(sorted(_CODEC_BY_SUFFIX))}, "
                f"got {value!r}"
            )
        return value


_recordings_lock = threading.Lock()
_recordings: dict[str, int] = {}  # resolved output path -> next number to try


def recording_path(path: Path) -> Path:
    """The file a new recording to ``path`` goes to: ``path`` itself the first time this process
    records to it, then ``stem-001.ext``, ``stem-002.ext``, ... (skipping files that exist), so a
    re-opened recording (also by a new sink object for the same path) never truncates an earlier
    file."""
    key = str(path.resolve())
    with _recordings_lock:
        n = _recordings.get(key)
        if n is None:
            _recordings[key] = 1
            return path
        while True:
            candidate = path.with_name(f"{path.stem}-{n:03d}{path.suffix}")
            n += 1
            if not candidate.exists():
                _recordings[key] = n
                return candidate


class VideoSink(FrameSink):
    kind = "video"

    def __init__(self, cfg: VideoSinkConfig) -> None:
        self.cfg = cfg
        self.path: Path | None = None  # the file being written (numbered after a re-open)
        self._writer: Any = None
        self._size: tuple[int, int] = (0, 0)
        self._buf: np.ndarray | None = None
        self.frames_written = 0

    def open(self, width: int, height: int, fps: float) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"video sink needs a frame size, got {width}x{height}")
        base = Path(self.cfg.path).expanduser()
        base.parent.mkdir(parents=True, exist_ok=True)
        path = recording_path(base)
        if path == base and path.exists():
            log.warning("overwriting %s", path)
        elif path != base:
            log.warning("recording re-opened: continuing in %s", path)
        codec = self.cfg.codec or _CODEC_BY_SUFFIX[path.suffix.lower()]
        writer = cv2.VideoWriter(
            str(path),
            cv2.VideoWriter.fourcc(*codec),
            float(fps if fps > 0 else 30.0),
            (width, height),
        )
        if not writer.isOpened():
            writer.release()
            raise OSError(f"OpenCV cannot write {path} with codec {codec!r}")
        self._writer = writer
        self.path = path
        self._size = (height, width)
        self._buf = np.empty((height, width, 3), np.uint8)
        self.frames_written = 0
        log.info("recording %dx%d @ %g fps to %s (%s)", width, height, fps, path, codec)

    def send(self, rgb: np.ndarray) -> None:
        if self._writer is None or self._buf is None:
            raise RuntimeError("VideoSink.send() called before open()")
        rgb = as_rgb(rgb)
        if rgb.shape[:2] != self._size:
            raise FrameError(
                f"video sink was opened at {self._size[1]}x{self._size[0]}, "
                f"got a {rgb.shape[1]}x{rgb.shape[0]} frame"
            )
        cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR, dst=self._buf)
        self._writer.write(self._buf)
        self.frames_written += 1

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()
            log.info("closed %s after %d frames", self.path, self.frames_written)

    def describe(self) -> str:
        return f"video:{self.cfg.path}"
