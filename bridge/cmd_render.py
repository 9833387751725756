"""``streambridge render INPUT OUTPUT_DIR``: the live pipeline, offline, frame-accurate.

Output ``k`` is the stream's result for input ``k``: the stream's ``n - 1`` frames of latency are
compensated and the buffer is drained at the end by feeding the last frame again.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bridge.cli import CliError

log = logging.getLogger("streambridge.render")

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def parse_size(text: str) -> tuple[int, int]:
    """argparse type for WxH (the same rules as config files and presets)."""
    from bridge.presets import parse_size as parse

    try:
        return parse(text.lower())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_steps(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps should be comma-separated integers like 32,45, got {text!r}") from None
    from stream_core.schedule import check_t_index_list

    try:
        return check_t_index_list(steps)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Model/pipeline flags shared by ``render`` and ``run``."""
    p.add_argument("--model", help="diffusers folder or hub id (default stabilityai/sd-turbo)")
    p.add_argument("--vae", help="taesd (default), full, or a folder / hub id")
    p.add_argument("--lcm-lora", help="auto (default), none, or a folder / hub id")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])


#: ``--acceleration`` choices of ``run`` and ``render`` (the config's ``pipeline.acceleration``)
ACCELERATION_CHOICES: tuple[str, ...] = ("auto", "none", "compile", "tensorrt", "onnxruntime")
ACCELERATION_HELP = ("auto (default: what measured fastest on this device), none, compile, tensorrt, onnxruntime "
                     "(docs/acceleration.md)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="run a folder of images or a video file through the pipeline")
    p.add_argument("input", help="a folder of images (sorted by name) or a video file")
    p.add_argument("output_dir", help="folder for 000000.png, 000001.png, ...")
    add_model_args(p)
    p.add_argument("--prompt", default="a neon city at night, cinematic")
    p.add_argument("--negative-prompt", default="")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=parse_steps, help="t_index_list, e.g. 32,45")
    g.add_argument("--strength", type=float, help="img2img strength 0..1 (mapped onto --num-steps steps)")
    p.add_argument("--num-steps", type=int, default=2, help="steps used with --strength (default 2)")
    p.add_argument("--cfg", choices=["none", "full", "self", "initialize"], default="self")
    p.add_argument("--guidance", type=float, default=1.2)
    p.add_argument("--delta", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--smoothing", type=float, default=0.0, help="temporal smoothing 0..0.95 (default 0: off)")
    p.add_argument("--latent-feedback", type=float, default=0.0,
                   help="share of the previous output latent fed into the next input, 0..0.9 (default 0: off)")
    p.add_argument("--temporal-frames", type=int, default=0,
                   help="cached attention over the last N frames, 1..4 (default 0: off; auto runs it eagerly on "
                   "the CPU; onnxruntime / tensorrt run graphs built for the bank: engines build --temporal-frames N, "
                   "or --allow-build)")
    p.add_argument("--temporal-interval", type=int, default=1, help="refresh the cached frames every N frames")
    p.add_argument("--temporal-injection", type=float, default=0.0, help="feature injection strength 0..1")
    p.add_argument("--size", type=parse_size, default=(512, 512), help="WxH (default 512x512)")
    p.add_argument("--frame-buffer", type=int, default=1, help="frames per stream call (default 1)")
    p.add_argument("--add-noise", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--resize", choices=["fit", "fill", "stretch"], default="fill")
    p.add_argument("--acceleration", choices=ACCELERATION_CHOICES, default="auto", help=ACCELERATION_HELP)
    p.add_argument("--allow-build", action="store_true", default=None,
                   help="build any missing engine now (default: only auto's inductor compile on a GPU; "
                        "a missing engine is otherwise an error)")
    p.add_argument("--cache", help="engine cache folder (default $STREAMBRIDGE_CACHE or ~/.cache/streambridge)")
    cn = p.add_argument_group("ControlNet (each option once per --controlnet, in the same order)")
    cn.add_argument("--controlnet", action="append", default=[], metavar="FOLDER",
                    help="a ControlNet (diffusers folder or hub id); repeat for several (their residuals add)")
    cn.add_argument("--controlnet-scale", action="append", type=float, default=[], metavar="S",
                    help="conditioning scale of the matching --controlnet (default 1.0)")
    cn.add_argument("--controlnet-preprocessor", action="append", choices=["none", "canny", "depth"], default=[],
                    help="none (the control frame as it is, default), canny (OpenCV edges) or depth "
                         "(--depth-model on the device)")
    cn.add_argument("--control-input", action="append", default=[], metavar="PATH",
                    help="control frames from a folder or video, frame by frame ('input': the input frames, the "
                         "default); once for every ControlNet or once per --controlnet")
    cn.add_argument("--depth-model", help="transformers depth-estimation model (folder or hub id) for the depth "
                                          "preprocessor")
    cn.add_argument("--canny-low", type=float, default=100.0, help="canny lower threshold (default 100)")
    cn.add_argument("--canny-high", type=float, default=200.0, help="canny upper threshold (default 200)")
    p.set_defaults(func=run_render)


def iter_input(path: Path) -> tuple[int, Iterator[np.ndarray]]:
    """(frame count, iterator of RGB uint8 frames) for a folder or a video file."""
    import cv2

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise CliError(f"{path}: no images ({', '.join(sorted(IMAGE_EXTS))}) in this folder")

        def gen_files() -> Iterator[np.ndarray]:
            for f in files:
                img = cv2.imread(str(f), cv2.IMREAD_COLOR)
                if img is None:
                    raise CliError(f"{f}: cannot read this image")
                yield cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

        return len(files), gen_files()
    if not path.is_file():
        raise CliError(f"{path}: no such file or folder")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise CliError(f"{path}: cannot open this video (OpenCV/FFmpeg could not read it)")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    ok, first = cap.read()
    if not ok:
        cap.release()
        raise CliError(f"{path}: the video has no readable frames")

    def gen_video() -> Iterator[np.ndarray]:
        frame = first
        try:
            while True:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                ok, frame = cap.read()
                if not ok:
                    return
        finally:
            cap.release()

    return count, gen_video()


def run_render(args: argparse.Namespace) -> int:
    import cv2

    from bridge.runtime.convert import Resizer
    from stream_core.engine import StreamEngine
    from stream_core.models import ModelLoadError, ModelNotFoundError, ModelSpec, load_components
    from stream_core.pipeline import StreamSettings
    from stream_core.schedule import strength_to_t_index_list

    src = Path(args.input)
    out_dir = Path(args.output_dir)
    if args.frame_buffer < 1:
        raise CliError("--frame-buffer must be >= 1")
    if args.strength is not None:
        try:
            t_list = strength_to_t_index_list(args.strength, args.num_steps)
        except ValueError as exc:
            raise CliError(f"--strength/--num-steps: {exc}") from None
    else:
        t_list = args.steps or (32, 45)
    width, height = args.size
    settings = StreamSettings(
        width=width, height=height, t_index_list=t_list, frame_buffer_size=args.frame_buffer,
        cfg_type=args.cfg, guidance_scale=args.guidance, delta=args.delta, seed=args.seed,
        add_noise=args.add_noise, smoothing=args.smoothing, **_temporal(args),
    )
    try:
        settings.check()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    cn_specs, control_paths = controlnet_args(args)
    count, frames = iter_input(src)  # after the arguments: a typo is reported before any file is read
    controls = [None if p is None else _ControlFrames(p) for p in control_paths]
    spec = ModelSpec(
        model=args.model or ModelSpec.model, vae=args.vae or "taesd", lcm_lora=args.lcm_lora or "auto",
        device=args.device or "auto", dtype=args.dtype or "auto",
    )
    try:
        components = load_components(spec, controlnets=cn_specs)
    except (ModelNotFoundError, ModelLoadError, ValueError) as exc:
        raise CliError(str(exc), code=1) from None
    runner, choice = _runner(args, components, settings)
    engine = StreamEngine(components, settings, args.prompt, args.negative_prompt, runner=runner,
                          acceleration_info=choice.as_dict(), controlnets=cn_specs or None)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"{out_dir}: cannot create the output folder: {exc.strerror}") from None

    resizer = Resizer(width, height, args.resize)
    f = settings.frame_buffer_size
    latency = engine.pipeline.latency_frames
    progress = _progress(count)
    written = 0
    calls = 0
    last: np.ndarray | None = None

    def emit(out: np.ndarray, valid: int) -> None:
        nonlocal written
        for j in range(valid):
            path = out_dir / f"{written:06d}.png"
            if not cv2.imwrite(str(path), cv2.cvtColor(out[j], cv2.COLOR_RGB2BGR)):
                raise CliError(f"{path}: cannot write")
            written += 1
            progress.update(1)

    valid_per_call: list[int] = []
    preprocessors = [sp.preprocessor for sp in cn_specs]
    last_control: list[np.ndarray | None] | None = None

    def control_for(batch: np.ndarray) -> list[np.ndarray | None] | None:
        if not cn_specs:
            return None
        out: list[np.ndarray | None] = []
        for k, pre in enumerate(preprocessors):
            ctl = None if controls[k] is None else controls[k].take(batch.shape[0], resizer)
            if pre == "canny":
                ctl = canny_rgb(batch if ctl is None else ctl, args.canny_low, args.canny_high)
            out.append(ctl)
        return out

    try:
        batches = _batches(frames, f, resizer)
        for batch, valid in batches:
            last = batch
            last_control = control_for(batch)
            out = engine.process(batch, control=last_control)
            valid_per_call.append(valid)
            if calls >= latency:
                emit(out, valid_per_call[calls - latency])
            calls += 1
        # drain: push the last frames again until every input has left the stream
        while last is not None and calls < len(valid_per_call) + latency:
            out = engine.process(last, control=last_control)
            if calls >= latency:
                emit(out, valid_per_call[calls - latency])
            calls += 1
    finally:
        progress.close()
    if written == 0:
        raise CliError(f"{src}: no frames were read", code=1)
    log.info("wrote %d frames to %s", written, out_dir)
    return 0


def _temporal(args: argparse.Namespace) -> dict:
    """StreamSettings for latent feedback and the cached-attention bank (docs/temporal.md)."""
    out = {"latent_feedback": args.latent_feedback}
    if not args.temporal_frames:
        if args.temporal_injection:
            raise CliError("--temporal-injection needs --temporal-frames (the cached frames it searches)")
        return out
    from stream_core.temporal import check_injection, check_interval, check_max_frames

    try:
        check_max_frames(args.temporal_frames)
        check_interval(args.temporal_interval)
        check_injection(args.temporal_injection)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    out.update(temporal_max_frames=args.temporal_frames, temporal_interval=args.temporal_interval,
               temporal_injection=args.temporal_injection)
    return out


def controlnet_args(args: argparse.Namespace) -> tuple[list, list[Path | None]]:
    """``ControlNetSpec`` per ``--controlnet`` and the control input of each (None: the input frames)."""
    from stream_core.controlnet import ControlNetSpec

    names = list(args.controlnet)
    k = len(names)
    for flag, given in (("--controlnet-scale", args.controlnet_scale),
                        ("--controlnet-preprocessor", args.controlnet_preprocessor)):
        if given and len(given) != k:
            raise CliError(f"{flag} is given {len(given)} time(s) but --controlnet {k} time(s): give it once per "
                           "--controlnet, in the same order (or not at all)")
    inputs = list(args.control_input)
    if inputs and not names:
        raise CliError("--control-input needs a --controlnet")
    if len(inputs) not in (0, 1, k):
        raise CliError(f"--control-input is given {len(inputs)} times but --controlnet {k} times: give it once "
                       "(for every ControlNet) or once per --controlnet")
    scales = args.controlnet_scale or [1.0] * k
    pres = args.controlnet_preprocessor or ["none"] * k
    if "depth" in pres and not args.depth_model:
        raise CliError("--controlnet-preprocessor depth needs --depth-model (a transformers depth-estimation model)")
    specs = []
    for name, scale, pre in zip(names, scales, pres, strict=True):
        spec = ControlNetSpec(name, scale, pre, True, args.depth_model if pre == "depth" else None)
        try:
            spec.check()
        except ValueError as exc:
            raise CliError(f"--controlnet {name}: {exc}") from None
        specs.append(spec)
    if len(inputs) == 1:
        inputs = inputs * k
    paths: list[Path | None] = [None if (i is None or i == "input") else Path(i) for i in inputs] or [None] * k
    for p in paths:
        if p is not None and not p.exists():
            raise CliError(f"--control-input {p}: no such file or folder")
    return specs, paths


def canny_rgb(frames: np.ndarray, low: float, high: float) -> np.ndarray:
    """OpenCV canny edges of (f, H, W, 3) RGB uint8 frames as white-on-black RGB."""
    import cv2

    out = np.empty_like(frames)
    for j, fr in enumerate(frames):
        edges = cv2.Canny(cv2.cvtColor(fr, cv2.COLOR_RGB2GRAY), low, high)
        out[j] = edges[..., None]
    return out


class _ControlFrames:
    """Control frames from a folder or video, one per input frame; the last is held when it ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count, self._it = iter_input(path)
        self._last: np.ndarray | None = None
        self._ended = False

    def take(self, f: int, resizer) -> np.ndarray:
        group = []
        for _ in range(f):
            if not self._ended:
                try:
                    self._last = np.array(resizer(next(self._it)), copy=True)
                except StopIteration:
                    self._ended = True
                    log.warning("%s: out of control frames; holding the last one", self.path)
            assert self._last is not None
            group.append(self._last)
        return np.stack(group)


def _runner(args: argparse.Namespace, components, settings):
    """The same acceleration choice and errors as ``streambridge run`` (``stream_core.accel.auto``)."""
    from stream_core.accel.auto import runner_for
    from stream_core.accel.cache import default_cache_dir
    from stream_core.accel.errors import AccelError

    cache = Path(args.cache).expanduser() if args.cache else default_cache_dir()
    try:
        return runner_for(components, args.acceleration, width=settings.width, height=settings.height,
                          steps=len(settings.t_index_list), frame_buffer=settings.frame_buffer_size,
                          cfg_type=settings.cfg_type, cache_dir=cache, allow_build=args.allow_build,
                          denoising_batch=settings.denoising_batch,
                          temporal=int(getattr(settings, "temporal_max_frames", 0)))
    except AccelError as exc:
        raise CliError(str(exc), code=1) from None


def _batches(frames: Iterator[np.ndarray], f: int, resizer) -> Iterator[tuple[np.ndarray, int]]:
    """Group resized frames by ``f``; the last group is padded with its last frame."""
    group: list[np.ndarray] = []
    for rgb in frames:
        group.append(np.array(resizer(rgb), copy=True))
        if len(group) == f:
            yield np.stack(group), f
            group = []
    if group:
        valid = len(group)
        group += [group[-1]] * (f - valid)
        yield np.stack(group), valid


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int):
    if not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total or None, unit="frame", desc="render")
