"""GPU benchmark: img2img fps of our pipeline per backend vs diffusers, real SD architectures.

Builds the sd-turbo (SD 2.1 U-Net) and SD1.5 U-Net architectures from their config dicts with
random weights (``stream_core.archs``; no download: speed does not depend on the weight values),
TAESD (``AutoencoderTiny()`` defaults) and a CLIP text encoder of the right width, at 512x512 fp16,
and measures in one run:

* ``sd-turbo-1step``: 1 U-Net step per frame (sd-turbo img2img);
* ``sd15-lcm-4step``: 4 U-Net steps per frame (LCM on the SD1.5 architecture);

each with these variants:

* ``eager``: StreamPipeline + TorchRunner (acceleration: none);
* ``graphs``: acceleration: compile, CUDA graphs of the U-Net/TAESD calls;
* ``inductor``: acceleration: compile with torch.compile (inductor) under the graphs;
* ``auto``: what ``acceleration: auto`` resolves to on this device (inductor + CUDA graphs on CUDA);
* ``aot``: compile_mode aot, inductor ahead of time (AOTInductor packages, loaded by later starts
  without tracing) under the CUDA graphs;
* ``fp8``: FP8 weights/matmuls where this build and the GPU have them (Hopper/Ada), with the PSNR of
  its output against eager fp16 (else skipped with the reason);
* ``tensorrt``: acceleration: tensorrt (skipped, with the reason, where TensorRT is missing);
* ``diffusers``: ``StableDiffusionImg2ImgPipeline`` (what ``AutoPipelineForImage2Image`` picks for
  these models) on the same modules, with num_inference_steps/strength chosen so it runs the same
  number of U-Net calls per frame (counted and reported).

Then, in the same run:

* the paper's two ratios (eager, SD1.5 at 4 steps): stream batch vs sequential denoising, and
  residual CFG ``self`` vs ``full`` CFG;
* cold and warm start-up: a fresh process builds the pipeline with an empty cache folder and runs
  its first frame, then a second process does the same with the same cache folder (torch's
  inductor/triton caches are pointed into that folder too, so "cold" is really cold);
* a prompt change every 100 ms at full speed (encoded on a side thread, like the daemon): longest
  frame interval / median, target <= 1.5;
* targets: >= 250 fps sd-turbo 1 step and >= 120 fps SD1.5 LCM 4 steps (best of our variants),
  printed as PASS/MISS (only meaningful on CUDA at 512x512 with the real architectures).

fps = frames / wall time over rounds of consecutive frames (input frames already on the GPU,
output left on the GPU, synchronised at the end of each round); the median round is reported.
Peak VRAM is ``torch.cuda.max_memory_allocated`` over the variant (weights included; TensorRT's
own allocations are outside torch's allocator, so its figure adds the device-memory delta).

``--budget-s`` skips what would not fit and stops cleanly when the time is up (also on SIGTERM):
the JSON (``--out``, default ``$OUT/gpu_bench.json``) always holds what was measured so far.

``--temporal`` measures the temporal-consistency options instead (see :func:`run_temporal_mode`).
ControlNet mode (``--controlnet``, or :func:`controlnet_bench` from a GPU script): SD1.5 with one
ControlNet of the SD1.5 ControlNet architecture (``ControlNetModel.from_unet``, random weights), at
1 and 4 steps, for each variant (eager, graphs, inductor): fps without and with the ControlNet in
the same run and their ratio (one ControlNet call per U-Net call, on the whole stream batch).
Output ``gpu_bench_controlnet.json``.

Needs torch, transformers and diffusers (carry diffusers as a wheel where it is missing); imports
stream_core from this repository. Smoke test without a GPU: ``--device cpu --arch tiny --quick``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import logging
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_T0 = time.perf_counter()  # process start, for the start-up probe
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # CPU smoke runs: see bench/onnx_cpu.py

import torch  # noqa: E402

log = logging.getLogger("bench.gpu")

from stream_core.archs import CLIP_H_TEXT, CLIP_L_TEXT, SD15_UNET, SD21_UNET  # noqa: E402,F401  (re-exported)

EULER_SD_TURBO: dict[str, Any] = {  # sd-turbo's own scheduler (for the diffusers baseline)
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon", "timestep_spacing": "trailing", "steps_offset": 1,
}

# scenario -> (architecture, our t_index_list, diffusers num_inference_steps, strength, guidance)
SCENARIOS: dict[str, dict[str, Any]] = {
    "sd-turbo-1step": {"arch": "sd21", "t_index_list": (35,), "d_steps": 2, "d_strength": 0.5, "d_guidance": 0.0,
                       "d_scheduler": "euler"},
    "sd15-lcm-4step": {"arch": "sd15", "t_index_list": (10, 23, 36, 45), "d_steps": 8, "d_strength": 0.5,
                       "d_guidance": 1.0, "d_scheduler": "lcm"},
}
VARIANTS: tuple[str, ...] = ("eager", "graphs", "inductor", "auto", "aot", "fp8", "tensorrt", "diffusers")
# rough worst-case seconds per variant, to stay inside --budget-s
# (inductor compiled in 45-55 s per scenario on an H200; the hard budget stop covers a slower machine)
ESTIMATE_S: dict[str, float] = {"eager": 25, "graphs": 30, "inductor": 90, "auto": 90, "aot": 110, "fp8": 90,
                                "tensorrt": 600, "diffusers": 40}
SLOW_VARIANTS: tuple[str, ...] = ("inductor", "auto", "aot", "fp8", "tensorrt")  # measured after the cheap ones
TARGET_FPS: dict[str, float] = {"sd-turbo-1step": 250.0, "sd15-lcm-4step": 120.0}
HITCH_TARGET = 1.5  # longest frame interval / median with a prompt change every 100 ms
ARCH_OF: dict[str, str] = {"sd21": "sd-turbo", "sd15": "sd15"}


class BudgetStop(BaseException):
    """Raised by the budget timer or SIGTERM; a BaseException so no variant's error handling eats it."""


# ---------------------------------------------------------------------------- models
def build_components(arch: str, device: torch.device, dtype: torch.dtype, tokenizer_dir: Path) -> Any:
    """Random-weight components of the given architecture (sd21, sd15 or tiny), built on ``device``."""
    if arch == "tiny":
        from stream_core.models import ModelSpec, load_components
        from stream_core.tiny import make_tiny_model

        folder = make_tiny_model(tokenizer_dir / "tiny-model")
        return load_components(ModelSpec(model=str(folder), device=str(device), dtype=str(dtype).replace("torch.", "")))
    from stream_core.archs import build_random_components

    return build_random_components(ARCH_OF.get(arch, arch), device, dtype, tokenizer_dir)


def prompt_embeds(components: Any, seed: int = 1) -> torch.Tensor:
    g = torch.Generator("cpu").manual_seed(seed)
    vocab = int(components.text_encoder.config.vocab_size)
    ids = torch.randint(0, vocab, (1, 77), generator=g).to(components.device)
    with torch.inference_mode():
        return components.text_encoder(ids)[0].clone()


# ---------------------------------------------------------------------------- timing helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_frames(call: Callable[[int], Any], device: torch.device, *, warmup: int, frames: int, rounds: int) -> dict[str, float]:
    for k in range(warmup):
        call(k)
    _sync(device)
    per_frame: list[float] = []
    k = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(frames):
            call(k)
            k += 1
        _sync(device)
        per_frame.append((time.perf_counter() - t0) / frames)
    med = statistics.median(per_frame)
    return {"ms_per_frame": med * 1e3, "fps": 1.0 / med, "ms_min": min(per_frame) * 1e3, "ms_max": max(per_frame) * 1e3}


class UNetCounter:
    def __init__(self, unet: Any) -> None:
        self.calls = 0
        self.rows = 0
        self.handle = unet.register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: tuple[Any, ...]) -> None:
        self.calls += 1
        if args and hasattr(args[0], "shape"):
            self.rows += int(args[0].shape[0])

    def close(self) -> None:
        self.handle.remove()


@contextlib.contextmanager
def _peak(device: torch.device) -> Any:
    box: dict[str, float | None] = {"peak_gib": None, "delta_gib": None}
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        free0, _ = torch.cuda.mem_get_info(device)
    try:
        yield box
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            box["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            free1, _ = torch.cuda.mem_get_info(device)
            box["delta_gib"] = (free0 - free1) / 2**30


# ---------------------------------------------------------------------------- variants
def accel_for(variant: str, device: torch.device) -> tuple[str, Any] | str:
    """(acceleration, AccelOptions) for one of our variants, or why this build/machine cannot run it."""

    from stream_core.accel import ACCELERATIONS, AccelOptions

    if variant == "graphs":
        return "compile", AccelOptions(compile_mode="graphs")
    if variant == "inductor":
        return "compile", AccelOptions(compile_mode="inductor")
    if variant == "aot":
        return "compile", AccelOptions(compile_mode="aot")
    if variant == "tensorrt":
        return "tensorrt", AccelOptions()
    if variant == "auto":
        # what `acceleration: auto` resolves to on this device (stream_core.accel.auto)
        from stream_core.accel.auto import machine_choice

        if device.type != "cuda":
            return ("auto is measured on CUDA only (elsewhere it runs eager, or cached ONNX graphs: "
                    "the eager and onnxruntime figures)")
        choice = machine_choice(device.type)
        if choice.backend not in ACCELERATIONS:
            return f"not available in this build (auto picks {choice.backend!r})"
        if choice.backend == "none":
            return f"auto runs eager here ({choice.reason}): the eager variant measures it"
        return choice.backend, AccelOptions(compile_mode=choice.compile_mode)
    if variant == "fp8":
        if device.type != "cuda":
            return "FP8 needs a CUDA GPU with FP8 tensor cores (Ada/Hopper, compute capability 8.9+)"
        cap = torch.cuda.get_device_capability(device)
        if cap < (8, 9):
            return f"FP8 needs compute capability 8.9+ (Ada/Hopper); this GPU has {cap[0]}.{cap[1]}"
        return "compile", AccelOptions(compile_mode="inductor", fp8=True)
    raise ValueError(f"no acceleration for variant {variant!r}")


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two images in [-1, 1] (peak 1 after mapping to [0, 1]); inf when equal."""
    mse = float(((a.float() - b.float()) / 2).pow(2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def run_ours(variant: str, components: Any, scenario: dict[str, Any], frames_in: list[torch.Tensor], pos: torch.Tensor,
             size: int, timing: dict[str, int], cache_dir: Path, *, reference: list[torch.Tensor] | None = None,
             hitch_s: float = 0.0, partial: dict[str, Any] | None = None) -> dict[str, Any]:
    """One of our variants; ``reference``: eager's probe outputs (PSNR is reported against them).
    Returns the figures plus ``probe`` (this variant's first outputs, on the CPU). ``partial``
    receives the figures as soon as they are measured (a budget stop keeps them)."""
    from stream_core.accel import build_runner
    from stream_core.pipeline import StreamPipeline, StreamSettings
    from stream_core.runner import TorchRunner

    t_list = scenario["t_index_list"]
    n = len(t_list)
    settings = StreamSettings(width=size, height=size, t_index_list=t_list, cfg_type="none", frame_buffer_size=1, seed=2)
    t0 = time.perf_counter()
    if variant == "eager":
        runner: Any = TorchRunner(components.unet, components.vae)
    else:
        how = accel_for(variant, components.device)
        if isinstance(how, str):
            raise RuntimeError(how)
        acceleration, options = how
        runner = build_runner(components, acceleration, batch=n, width=size, height=size, cache_dir=cache_dir,
                              allow_build=True, steps=n, cfg_type="none", options=options)
    setup_s = time.perf_counter() - t0
    pipe = StreamPipeline(runner, components.scheduler, settings, pos)
    # the first outputs of a fresh stream on fixed frames: the same for every variant up to rounding
    probe = [pipe(frames_in[i]).float().cpu() for i in range(3)]
    calls = None
    if variant == "eager":  # a hook on a compiled module would make dynamo recompile: eager only
        counter = UNetCounter(components.unet)
        pipe(frames_in[1])
        calls = counter.calls
        counter.close()
    res: dict[str, Any] = time_frames(lambda k: pipe(frames_in[k % len(frames_in)]), components.device, **timing)
    out = pipe(frames_in[2])
    res.update(setup_s=setup_s, unet_batch=pipe.unet_batch, unet_steps_per_frame=n, finite=bool(torch.isfinite(out).all()))
    res["runner"] = type(runner).__name__
    info = getattr(runner, "info", None)
    if isinstance(info, dict):
        res["runner_info"] = {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))}
    if calls is not None:
        res["unet_calls_per_frame"] = calls  # one stream-batched call of batch n
    if reference is not None and variant != "eager":
        res["psnr_vs_eager_db"] = round(min(psnr_db(a, b) for a, b in zip(probe, reference, strict=True)), 2)
    if partial is not None:
        partial.update(res)
    if hitch_s > 0:
        res["prompt_hitch"] = measure_prompt_hitch(pipe, components, frames_in, hitch_s)
    res["probe"] = probe
    return res


def measure_prompt_hitch(pipe: Any, components: Any, frames_in: list[torch.Tensor], seconds: float,
                         period: float = 0.1) -> dict[str, Any]:
    """Frames back to back at full speed, first with no prompt traffic, then with a new prompt every
    ``period`` s encoded on a side thread (a side CUDA stream on a GPU, as the daemon does) and
    applied before the next frame. Frame intervals are measured with a sync per frame (the daemon
    copies every frame to the host)."""
    from stream_core.prompts import PromptEncoder

    device = components.device
    enc = PromptEncoder(components.tokenizer, components.text_encoder)
    side = torch.cuda.Stream(device=device) if device.type == "cuda" else None

    def encode(text: str) -> torch.Tensor:
        if side is None:
            return enc.encode(text)
        with torch.cuda.stream(side):
            emb = enc.encode(text)
        side.synchronize()
        return emb

    encode("warm-up prompt")

    def phase(duration: float, changes: bool) -> dict[str, Any]:
        box: list[torch.Tensor] = []
        lock = threading.Lock()
        stop = threading.Event()
        encoded = [0]

        def producer() -> None:
            k = 0
            next_t = time.perf_counter()
            while not stop.is_set():
                emb = encode(f"prompt change {k}: a painted city, colour {k % 7}, light {k % 5}")
                k += 1
                encoded[0] = k
                with lock:
                    box[:] = [emb]
                next_t += period
                stop.wait(max(0.0, next_t - time.perf_counter()))

        thread = threading.Thread(target=producer, name="bench-prompts", daemon=True) if changes else None
        if thread is not None:
            thread.start()
        stamps = [time.perf_counter()]
        applied = 0
        k = 0
        end = stamps[0] + duration
        try:
            while stamps[-1] < end:
                with lock:
                    emb = box.pop() if box else None
                if emb is not None:
                    pipe.set_prompt_embeds(emb)
                    applied += 1
                pipe(frames_in[k % len(frames_in)])
                _sync(device)
                k += 1
                stamps.append(time.perf_counter())
        finally:
            stop.set()
            if thread is not None:
                thread.join(5.0)
        intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        med = statistics.median(intervals)
        return {"frames": len(intervals), "changes_applied": applied, "prompts_encoded": encoded[0],
                "median_ms": round(med * 1e3, 3), "max_ms": round(max(intervals) * 1e3, 3),
                "max_over_median": round(max(intervals) / med, 3)}

    quiet = phase(max(0.5, seconds / 2), changes=False)
    busy = phase(seconds, changes=True)
    return {"period_s": period, "quiet": quiet, "with_changes": busy, "target": HITCH_TARGET,
            "verdict": "PASS" if busy["max_over_median"] <= HITCH_TARGET else "MISS"}


def run_paper_ratios(components: Any, scenario: dict[str, Any], frames_in: list[torch.Tensor], pos: torch.Tensor,
                     neg: torch.Tensor, size: int, timing: dict[str, int]) -> dict[str, Any]:
    """The paper's two ratios with eager PyTorch (sequential denoising runs the U-Net at batch 1,
    which the static-shape backends cannot): stream batch vs sequential (cfg none), and residual
    CFG self vs full CFG (stream batch), both at the scenario's step count."""
    from stream_core.pipeline import StreamPipeline, StreamSettings
    from stream_core.runner import TorchRunner

    runner = TorchRunner(components.unet, components.vae)
    t_list = scenario["t_index_list"]

    def fps(cfg: str, denoising_batch: bool) -> dict[str, Any]:
        s = StreamSettings(width=size, height=size, t_index_list=t_list, cfg_type=cfg, guidance_scale=1.5,
                           seed=2, denoising_batch=denoising_batch)
        pipe = StreamPipeline(runner, components.scheduler, s, pos, neg)
        pipe(frames_in[0])
        r = time_frames(lambda k: pipe(frames_in[k % len(frames_in)]), components.device, **timing)
        return {"cfg": cfg, "denoising_batch": denoising_batch, "fps": round(r["fps"], 2),
                "ms_per_frame": round(r["ms_per_frame"], 3), "unet_batch": pipe.unet_batch}

    stream, seq = fps("none", True), fps("none", False)
    self_, full = fps("self", True), fps("full", True)
    return {
        "variant": "eager", "steps": len(t_list),
        "stream_vs_sequential": {"ratio": round(stream["fps"] / seq["fps"], 3), "stream": stream, "sequential": seq,
                                 "paper": "~1.5x (RTX 4090, TensorRT)"},
        "self_vs_full_cfg": {"ratio": round(self_["fps"] / full["fps"], 3), "self": self_, "full": full,
                             "paper": "2.05x at 5 steps (RTX 4090)"},
    }


def run_diffusers(components: Any, scenario: dict[str, Any], frames01: list[torch.Tensor], pos: torch.Tensor,
                  timing: dict[str, int]) -> dict[str, Any]:
    from diffusers import EulerDiscreteScheduler, LCMScheduler, StableDiffusionImg2ImgPipeline

    from stream_core.tiny import SCHEDULER_CONFIG

    sched = (EulerDiscreteScheduler.from_config(EULER_SD_TURBO) if scenario["d_scheduler"] == "euler"
             else LCMScheduler.from_config(SCHEDULER_CONFIG))
    t0 = time.perf_counter()
    pipe = StableDiffusionImg2ImgPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=sched, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    setup_s = time.perf_counter() - t0

    def call(k: int) -> Any:
        return pipe(prompt_embeds=pos, image=frames01[k % len(frames01)], num_inference_steps=scenario["d_steps"],
                    strength=scenario["d_strength"], guidance_scale=scenario["d_guidance"], output_type="pt",
                    return_dict=False)[0]

    counter = UNetCounter(components.unet)
    with torch.inference_mode():
        out = call(0)
        calls, rows = counter.calls, counter.rows
        counter.close()
        res = time_frames(call, components.device, **timing)
    res.update(setup_s=setup_s, unet_steps_per_frame=calls, unet_rows_per_frame=rows,
               finite=bool(torch.isfinite(out).all()),
               note=f"num_inference_steps={scenario['d_steps']} strength={scenario['d_strength']} "
                    f"guidance_scale={scenario['d_guidance']} ({scenario['d_scheduler']}); prompt_embeds passed "
                    "in (no text encoding per frame); image pre/post-processing included")
    return res


# ---------------------------------------------------------------------------- main
def _env(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"date": _dt.date.today().isoformat(), "python": platform.python_version(),
                           "torch": torch.__version__, "device": str(device)}
    try:
        import diffusers
        import transformers

        env["diffusers"] = diffusers.__version__
        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", vram_gib=round(p.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, sms=p.multi_processor_count)
    else:
        env.update(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return env


def _table(results: list[dict[str, Any]]) -> str:
    header = ["scenario", "variant", "fps", "ms/frame", "U-Net steps", "peak VRAM GiB", "setup s", "note"]
    rows = []
    for r in results:
        if r.get("skipped"):
            rows.append([r["scenario"], r["variant"], "-", "-", "-", "-", "-", "skipped: " + r["skipped"][:90]])
            continue
        peak = r.get("peak_gib")
        rows.append([r["scenario"], r["variant"], f"{r['fps']:.1f}", f"{r['ms_per_frame']:.2f}",
                     str(r.get("unet_steps_per_frame", "-")), "-" if peak is None else f"{peak:.2f}",
                     f"{r.get('setup_s', 0):.1f}", r.get("speedup_note", "")])
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def run_startup_probe(args: argparse.Namespace) -> int:
    """One start-up in this (fresh) process: build the components, the runner (compiling or loading
    from ``--cache-dir``) and the pipeline, run the first frame; print one ``STARTUP {json}`` line."""
    t_imports = time.perf_counter() - _T0
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    scenario = SCENARIOS[args.scenarios.split(",")[0]]
    arch = "tiny" if args.arch == "tiny" else scenario["arch"]
    cache = Path(args.cache_dir)
    t0 = time.perf_counter()
    components = build_components(arch, device, dtype, cache / "tok")
    pos = prompt_embeds(components)
    t1 = time.perf_counter()
    from stream_core.accel import build_runner
    from stream_core.pipeline import StreamPipeline, StreamSettings
    from stream_core.runner import TorchRunner

    n = len(scenario["t_index_list"])
    if args.startup_probe == "eager":
        runner: Any = TorchRunner(components.unet, components.vae)
    else:
        how = accel_for(args.startup_probe, device)
        if isinstance(how, str):
            raise SystemExit(how)
        runner = build_runner(components, how[0], batch=n, width=args.size, height=args.size, cache_dir=cache / "engines",
                              allow_build=True, steps=n, cfg_type="none", options=how[1])
    settings = StreamSettings(width=args.size, height=args.size, t_index_list=scenario["t_index_list"], cfg_type="none",
                              seed=2)
    pipe = StreamPipeline(runner, components.scheduler, settings, pos)
    t2 = time.perf_counter()
    frame = torch.rand((1, 3, args.size, args.size), generator=torch.Generator("cpu").manual_seed(5)).to(device, dtype)
    pipe(frame * 2 - 1)
    _sync(device)
    t3 = time.perf_counter()
    # the frame rate this process then reaches (no extra compile: the variant's speed from the
    # warm start, e.g. of ahead-of-time packages loaded from the cache)
    n_frames = 5 if args.quick or device.type != "cuda" else 60
    for _ in range(3):
        pipe(frame * 2 - 1)
    _sync(device)
    t4 = time.perf_counter()
    for _ in range(n_frames):
        pipe(frame * 2 - 1)
    _sync(device)
    fps = n_frames / (time.perf_counter() - t4)
    print("STARTUP " + json.dumps({"imports_s": round(t_imports, 2), "components_s": round(t1 - t0, 2),
                                   "runner_s": round(t2 - t1, 2), "first_frame_s": round(t3 - t2, 2),
                                   "build_to_first_frame_s": round(t3 - t1, 2), "process_s": round(t3 - _T0, 2),
                                   "fps_after": round(fps, 1)}),
          flush=True)
    return 0


def measure_startup(args: argparse.Namespace, variant: str, scenario: str, cache_dir: Path,
                    deadline: float) -> dict[str, Any]:
    """Cold (empty cache folder) and warm (the same folder again) start-ups, each in a fresh process."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "torchinductor"),
           "TRITON_CACHE_DIR": str(cache_dir / "triton"), "STREAMBRIDGE_CACHE": str(cache_dir / "streambridge"),
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--startup-probe", variant, "--cache-dir", str(cache_dir),
           "--device", args.device, "--arch", args.arch, "--size", str(args.size), "--scenarios", scenario]
    out: dict[str, Any] = {"variant": variant, "scenario": scenario,
                           "note": "each start-up is a fresh process; 'warm' reuses the cold run's cache folder "
                                   "(engine cache, inductor and triton caches)"}
    for phase in ("cold", "warm"):
        remaining = deadline - time.perf_counter()
        if remaining < 10:
            out[phase] = {"skipped": "time budget"}
            continue
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = proc.communicate(timeout=remaining)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out[phase] = {"skipped": f"time budget: still starting after {remaining:.0f} s"}
            continue
        finally:
            if proc.poll() is None:  # BudgetStop / SIGTERM while waiting: do not leave it running
                proc.kill()
                proc.communicate()
        wall = time.perf_counter() - t0
        line = next((x for x in stdout.splitlines() if x.startswith("STARTUP ")), None)
        if proc.returncode != 0 or line is None:
            out[phase] = {"failed": f"exit {proc.returncode}: {(stderr or stdout).strip()[-400:]}"}
            continue
        out[phase] = {**json.loads(line[len("STARTUP "):]), "wall_s": round(wall, 2)}
    return out


def _startup_phase(args: argparse.Namespace, variant: str, scenario: str, tmpdir: Path, t_start: float,
                   deadline: float) -> dict[str, Any] | None:
    if variant == "none":
        return None
    need = ESTIMATE_S.get(variant, 60) * (0.25 if args.arch == "tiny" else 1.0)  # cold compile + warm load
    if time.perf_counter() - t_start + need > args.budget_s:
        return {"variant": variant, "skipped": f"time budget: needs about {need:.0f} s"}
    log.info("cold and warm start-up (%s) ...", variant)
    return measure_startup(args, variant, scenario, tmpdir / "startup-cache", deadline - 2.0)


def _targets(report: dict[str, Any], device: torch.device, args: argparse.Namespace) -> list[dict[str, Any]]:
    real = device.type == "cuda" and args.arch == "real" and args.size == 512
    out = []
    for scen, target in TARGET_FPS.items():
        ours = [r for r in report["results"] if r["scenario"] == scen and not r.get("skipped")
                and r["variant"] != "diffusers"]
        if not ours:
            continue
        best = max(ours, key=lambda r: r["fps"])
        verdict = ("PASS" if best["fps"] >= target else "MISS") if real else "n/a (not CUDA, real architecture, 512x512)"
        out.append({"scenario": scen, "target_fps": target, "best_variant": best["variant"],
                    "best_fps": round(best["fps"], 1), "verdict": verdict})
    for r in report["results"]:
        hitch = r.get("prompt_hitch")
        if hitch:
            out.append({"scenario": r["scenario"], "variant": r["variant"],
                        "target": f"prompt change every {hitch['period_s'] * 1000:.0f} ms: longest frame interval "
                                  f"<= {HITCH_TARGET}x median",
                        "value": hitch["with_changes"]["max_over_median"], "verdict": hitch["verdict"]})
    return out


def _default_fast_variant(variants: list[str], device: torch.device) -> str | None:
    """The variant the prompt-change and start-up figures use: the fastest kind this build has."""
    for v in ("auto", "inductor", "graphs", "eager"):
        if v not in variants:
            continue
        if v in ("auto", "inductor", "graphs") and device.type != "cuda":
            continue
        if v == "auto" and isinstance(accel_for("auto", device), str):
            continue
        return v
    return None


# ---------------------------------------------------------------------------- temporal mode
# `--temporal`: the cost of the cached-attention bank, feature injection and latent feedback on the
# SD1.5 architecture (eager PyTorch; the bank lives in the U-Net's self-attention processors)
TEMPORAL_SCENARIOS: dict[str, tuple[int, ...]] = {"sd15-1step": (35,), "sd15-lcm-4step": (10, 23, 36, 45)}
TEMPORAL_VARIANTS: dict[str, dict[str, Any]] = {
    "off": {},
    "cache 1": {"temporal_max_frames": 1},
    "cache 2": {"temporal_max_frames": 2},
    "cache 4": {"temporal_max_frames": 4},
    "cache 2 + injection 0.5": {"temporal_max_frames": 2, "temporal_injection": 0.5},
    "bank 2 built static, cache off": {"temporal_max_frames": 2, "temporal_cache": False, "temporal_static": True},
    "feedback 0.3": {"latent_feedback": 0.3},
    # the compile backend's per-call CUDA graphs, captured with the bank in place (CUDA only)
    "graphs: off": {"runner": "graphs"},
    "graphs: cache 2": {"runner": "graphs", "temporal_max_frames": 2},
    "graphs: cache 2 + injection 0.5": {"runner": "graphs", "temporal_max_frames": 2, "temporal_injection": 0.5},
}


def run_temporal_variant(variant: str, components: Any, t_list: tuple[int, ...], frames_in: list[torch.Tensor],
                         pos: torch.Tensor, size: int, timing: dict[str, int]) -> dict[str, Any]:
    """One temporal variant: ms per frame, fps, peak memory, bank size; the bank is removed after."""
    from stream_core.pipeline import StreamPipeline, StreamSettings
    from stream_core.runner import TorchRunner

    spec = dict(TEMPORAL_VARIANTS[variant])
    kind = spec.pop("runner", "eager")
    settings = StreamSettings(width=size, height=size, t_index_list=t_list, cfg_type="none", seed=2, **spec)
    with _peak(components.device) as mem:
        if kind == "graphs":
            from stream_core.accel.compiled import CompiledRunner

            runner: Any = CompiledRunner(components.unet, components.vae, compile_mode="graphs", cuda_graphs=True)
        else:
            runner = TorchRunner(components.unet, components.vae)
        pipe = StreamPipeline(runner, components.scheduler, settings, pos)
        try:
            res: dict[str, Any] = time_frames(lambda k: pipe(frames_in[k % len(frames_in)]), components.device,
                                              **timing)
            out = pipe(frames_in[0])
            res["finite"] = bool(torch.isfinite(out).all())
            bank = pipe.temporal
            if bank is not None:
                res["bank_mib"] = round(sum(t.numel() * t.element_size() for t in bank.tensors().values()) / 2**20, 1)
                res["bank_layers"] = len(bank.names)
        finally:
            if pipe.temporal is not None:
                pipe.temporal.uninstall()  # the next variant gets the plain U-Net
    res.update(peak_gib=mem["peak_gib"], steps=len(t_list))
    return res


def run_temporal_mode(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, timing: dict[str, int],
                      out_path: Path, t_start: float) -> int:
    """``--temporal``: every TEMPORAL_VARIANTS entry for both step counts, within ``--budget-s``
    (checked before each variant from the slowest one so far); the JSON is saved after each."""
    report: dict[str, Any] = {"env": _env(device), "mode": "temporal", "size": args.size, "timing": timing,
                              "results": []}
    rows: list[dict[str, Any]] = report["results"]
    slowest = 0.0
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
        scen_pick = [x.strip() for x in (args.temporal_scenarios or ",".join(TEMPORAL_SCENARIOS)).split(",") if x.strip()]
        var_pick = [x.strip() for x in (args.temporal_variants or "").split(";") if x.strip()] or list(TEMPORAL_VARIANTS)
        for name in (*scen_pick, *var_pick):
            if name not in TEMPORAL_SCENARIOS and name not in TEMPORAL_VARIANTS:
                raise SystemExit(f"unknown temporal scenario or variant {name!r}")
        for scen, t_list in ((k, TEMPORAL_SCENARIOS[k]) for k in scen_pick):
            arch = "tiny" if args.arch == "tiny" else "sd15"
            components = build_components(arch, device, dtype, Path(tmp) / f"tok-{scen}")
            pos = prompt_embeds(components)
            g = torch.Generator("cpu").manual_seed(5)
            frames_in = [(torch.rand((1, 3, args.size, args.size), generator=g) * 2 - 1).to(device, dtype)
                         for _ in range(8)]
            for variant in var_pick:
                row: dict[str, Any] = {"scenario": scen, "variant": variant, "arch": arch}
                if TEMPORAL_VARIANTS[variant].get("runner") == "graphs" and device.type != "cuda":
                    row["skipped"] = "CUDA graphs need a CUDA GPU"
                elif time.perf_counter() - t_start + 1.5 * slowest > args.budget_s:
                    row["skipped"] = "time budget"
                else:
                    t0 = time.perf_counter()
                    try:
                        row.update(run_temporal_variant(variant, components, t_list, frames_in, pos, args.size,
                                                        timing))
                    except Exception as exc:  # one failing variant must not lose the others
                        log.exception("%s / %s failed", scen, variant)
                        row["error"] = f"{type(exc).__name__}: {exc}"
                    slowest = max(slowest, time.perf_counter() - t0)
                rows.append(row)
                out_path.write_text(json.dumps(report, indent=1, default=str))
                log.info("%s / %s: %s", scen, variant, {k: v for k, v in row.items() if k not in ("scenario", "variant")})
            del components
            gc.collect()
    base = {r["scenario"]: r["ms_per_frame"] for r in rows if r["variant"] == "off" and "ms_per_frame" in r}
    print(f"{'scenario':<16}{'variant':<34}{'ms/frame':>10}{'x off':>8}{'peak GiB':>10}{'bank MiB':>10}")
    for r in rows:
        if "ms_per_frame" not in r:
            print(f"{r['scenario']:<16}{r['variant']:<34}  {r.get('skipped') or r.get('error')}")
            continue
        ratio = r["ms_per_frame"] / base[r["scenario"]] if r["scenario"] in base else float("nan")
        peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.2f}"
        print(f"{r['scenario']:<16}{r['variant']:<34}{r['ms_per_frame']:>10.2f}{ratio:>8.2f}{peak:>10}"
              f"{r.get('bank_mib', 0):>10}")
    print(f"JSON: {out_path}")
    return 0
# ---------------------------------------------------------------------------- ControlNet mode
CN_SCENARIOS: dict[str, tuple[int, ...]] = {"sd15-controlnet-1step": (35,), "sd15-controlnet-4step": (10, 23, 36, 45)}
CN_VARIANTS: tuple[str, ...] = ("eager", "graphs", "inductor")
CN_ESTIMATE_S: dict[str, float] = {"eager": 30, "graphs": 40, "inductor": 200}


def build_controlnet(unet: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A ControlNet of the SD1.5 ControlNet architecture for ``unet`` (random weights: its encoder
    copies the U-Net's, its zero convolutions start at zero; speed does not depend on the values)."""
    from diffusers import ControlNetModel

    with torch.device(device):
        cn = ControlNetModel.from_unet(unet)
    return cn.to(device=device, dtype=dtype).eval().requires_grad_(False)


def controlnet_bench(device: torch.device | str = "cuda", *, arch: str = "sd15", size: int = 512,
                     variants: tuple[str, ...] = ("eager", "graphs"), budget_s: float = 300.0,
                     timing: dict[str, int] | None = None, save: Callable[[dict[str, Any]], None] | None = None
                     ) -> dict[str, Any]:
    """fps of the stream with and without one ControlNet, at 1 and 4 steps, per variant; skips what
    would not fit in ``budget_s`` (with the reason). ``save`` gets the report after every row."""
    import dataclasses

    from stream_core.accel import AccelOptions, build_runner
    from stream_core.controlnet import ControlNetSpec, LoadedControlNet
    from stream_core.pipeline import StreamPipeline, StreamSettings
    from stream_core.runner import TorchRunner

    t_start = time.perf_counter()
    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    timing = timing or ({"warmup": 10, "frames": 30, "rounds": 5} if device.type == "cuda"
                        else {"warmup": 1, "frames": 3, "rounds": 3})
    report: dict[str, Any] = {"env": _env(device), "arch": arch, "size": size, "timing": timing, "results": []}
    with tempfile.TemporaryDirectory(prefix="sb-cn-bench-") as tmp:
        components = build_components(arch, device, dtype, Path(tmp) / "tok")
        cn = build_controlnet(components.unet, device, dtype)
        unit = LoadedControlNet(ControlNetSpec("random-sd15-controlnet"), cn)
        with_cn = dataclasses.replace(components, controlnets=[unit])
        report["controlnet_params"] = sum(p.numel() for p in cn.parameters())
        pos = prompt_embeds(components)
        g = torch.Generator("cpu").manual_seed(5)
        frames_in = [(torch.rand((1, 3, size, size), generator=g) * 2 - 1).to(device, dtype) for _ in range(8)]
        controls = [torch.rand((1, 3, size, size), generator=g).to(device, dtype) for _ in range(8)]
        for scen, t_list in CN_SCENARIOS.items():
            n = len(t_list)
            for variant in variants:
                row: dict[str, Any] = {"scenario": scen, "variant": variant}
                report["results"].append(row)
                left = budget_s - (time.perf_counter() - t_start)
                if variant != "eager" and device.type != "cuda":
                    row["skipped"] = f"{variant} needs CUDA"
                elif left < CN_ESTIMATE_S.get(variant, 60):
                    row["skipped"] = f"{left:.0f} s of budget left, {variant} needs about {CN_ESTIMATE_S[variant]:.0f} s"
                if "skipped" in row:
                    log.info("%s / %s skipped: %s", scen, variant, row["skipped"])
                    continue
                for label, comps in (("plain", components), ("controlnet", with_cn)):
                    settings = StreamSettings(width=size, height=size, t_index_list=t_list, cfg_type="none", seed=2)
                    if variant == "eager":
                        runner: Any = TorchRunner(comps.unet, comps.vae, [u.model for u in comps.controlnets])
                    else:
                        runner = build_runner(comps, "compile", batch=n, width=size, height=size,
                                              cache_dir=Path(tmp) / "cache", allow_build=True, steps=n,
                                              cfg_type="none", options=AccelOptions(compile_mode=variant))
                    pipe = StreamPipeline(runner, comps.scheduler, settings, pos, controlnets=comps.controlnets)
                    use = bool(comps.controlnets)
                    res = time_frames(lambda k, p=pipe, u=use: p(frames_in[k % 8], [controls[k % 8]] if u else None),
                                      device, **timing)
                    row[f"fps_{label}"] = round(res["fps"], 2)
                    row[f"ms_{label}"] = round(res["ms_per_frame"], 3)
                    del pipe, runner
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                row["cost_ratio"] = round(row["ms_controlnet"] / row["ms_plain"], 3)
                log.info("%s / %s: %.1f fps plain, %.1f fps with one ControlNet (%.2fx per frame)", scen, variant,
                         row["fps_plain"], row["fps_controlnet"], row["cost_ratio"])
                if save is not None:
                    save(report)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--arch", choices=("real", "tiny"), default="real",
                    help="real: sd-turbo + SD1.5 architectures; tiny: the test model (smoke test)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list of " + ", ".join(SCENARIOS))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    ap.add_argument("--size", type=int, default=512, help="square image size (default 512)")
    ap.add_argument("--quick", action="store_true", help="few frames per round (a smoke run)")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="skip what would not fit, stop cleanly when the time is up (default 480)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output (default $OUT/gpu_bench.json or out/gpu_bench.json)")
    ap.add_argument("--no-ratios", action="store_true", help="skip the paper's two ratios")
    ap.add_argument("--startup-variant", default="default",
                    help="variant for the cold/warm start-up figures (default: auto, else inductor on CUDA, else "
                         "eager; 'none' skips them)")
    ap.add_argument("--hitch-s", type=float, default=None,
                    help="seconds of frames with a prompt change every 100 ms (default 6; --quick 1.5; 0 skips)")
    ap.add_argument("--hitch-variant", default="default", help="variant for the prompt-change figure (default as "
                    "--startup-variant)")
    ap.add_argument("--temporal-scenarios", default=None,
                    help="temporal mode: comma list of " + ", ".join(TEMPORAL_SCENARIOS) + " (default all)")
    ap.add_argument("--temporal-variants", default=None,
                    help="temporal mode: semicolon list of variants, e.g. 'off;graphs: off;graphs: cache 2' (default all)")
    ap.add_argument("--temporal", action="store_true",
                    help="temporal mode: cost of cached attention / injection / feedback on SD1.5, 1 and 4 steps")
    ap.add_argument("--controlnet", action="store_true",
                    help="the ControlNet mode only: SD1.5 + one ControlNet at 1 and 4 steps (gpu_bench_controlnet.json)")
    ap.add_argument("--startup-probe", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("diffusers", "transformers", "torch._inductor", "torch._dynamo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.startup_probe:
        return run_startup_probe(args)
    if args.controlnet:
        return _controlnet_main(args)

    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU; use --device cpu --arch tiny for a smoke test")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    out_path = args.out or (Path(os.environ["OUT"]) / "gpu_bench.json" if os.environ.get("OUT") else ROOT / "out" / "gpu_bench.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    timing = {"warmup": 3, "frames": 10, "rounds": 3} if args.quick else {"warmup": 10, "frames": 50, "rounds": 5}
    if device.type == "cpu":
        timing = {"warmup": 1, "frames": 3, "rounds": 3} if args.quick else {"warmup": 2, "frames": 10, "rounds": 3}
    hitch_s = args.hitch_s if args.hitch_s is not None else (1.5 if args.quick else 6.0)
    if args.temporal:
        return run_temporal_mode(args, device, dtype, timing, out_path, t_start)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    report: dict[str, Any] = {"env": _env(device), "args": {k: str(v) for k, v in vars(args).items()},
                              "timing": timing, "results": [], "ratios": None, "startup": None, "targets": []}
    results: list[dict[str, Any]] = report["results"]

    def save() -> None:
        out_path.write_text(json.dumps(report, indent=1, default=str))

    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}")
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}")
    fast = _default_fast_variant(variants, device)
    hitch_variant = fast if args.hitch_variant == "default" else args.hitch_variant
    startup_variant = (fast or "eager") if args.startup_variant == "default" else args.startup_variant
    # most informative first, so a short budget keeps what matters: eager (the reference) and the
    # fastest variant this build has (targets, prompt-change pacing) for every scenario, the paper's
    # ratios, the start-up figures, then the other cheap variants, then the other slow ones
    first = [v for v in variants if v in ("eager", fast)]
    cheap_rest = [v for v in variants if v not in SLOW_VARIANTS and v not in first]
    slow_rest = [v for v in variants if v in SLOW_VARIANTS and v not in first]

    def on_budget(signum: int, frame: Any) -> None:
        raise BudgetStop("SIGTERM" if signum == getattr(signal, "SIGTERM", None) else f"time budget of {args.budget_s:.0f} s")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_budget)
        if hasattr(signal, "setitimer"):
            signal.signal(signal.SIGALRM, on_budget)
            signal.setitimer(signal.ITIMER_REAL, max(1.0, args.budget_s - 3.0))
    row: dict[str, Any] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
            tmpdir = Path(tmp)
            probes: dict[str, list[torch.Tensor]] = {}
            for phase in (first, "startup", cheap_rest, slow_rest):
                if phase == "startup":
                    report["startup"] = _startup_phase(args, startup_variant, scenarios[0], tmpdir, t_start, deadline)
                    save()
                    continue
                for scen_name in scenarios:
                    scenario = SCENARIOS[scen_name]
                    todo = [v for v in phase if not any(r["scenario"] == scen_name and r["variant"] == v for r in results)]
                    want_ratios = (phase is first and not args.no_ratios and scen_name == "sd15-lcm-4step"
                                   and report["ratios"] is None)
                    if not todo and not want_ratios:
                        continue
                    arch = "tiny" if args.arch == "tiny" else scenario["arch"]
                    log.info("building %s (%s) on %s", scen_name, arch, device)
                    components = build_components(arch, device, dtype, tmpdir / f"tok-{scen_name}")
                    pos = prompt_embeds(components)
                    g = torch.Generator("cpu").manual_seed(5)
                    frames01 = [torch.rand((1, 3, args.size, args.size), generator=g).to(device, dtype) for _ in range(8)]
                    frames_in = [f * 2 - 1 for f in frames01]
                    for variant in todo:
                        row = {"scenario": scen_name, "variant": variant, "arch": arch}
                        elapsed = time.perf_counter() - t_start
                        reason = _skip_reason(variant, device, elapsed, args.budget_s)
                        if reason:
                            row["skipped"] = reason
                            log.info("%s / %s skipped: %s", scen_name, variant, reason)
                            results.append(row)
                            row = None
                            save()
                            continue
                        log.info("%s / %s ...", scen_name, variant)
                        try:
                            with _peak(device) as mem:
                                if variant == "diffusers":
                                    res = run_diffusers(components, scenario, frames01, pos, timing)
                                else:
                                    res = run_ours(variant, components, scenario, frames_in, pos, args.size, timing,
                                                   tmpdir / "engines", reference=probes.get(scen_name),
                                                   hitch_s=hitch_s if variant == hitch_variant else 0.0,
                                                   partial=row)
                                    probe = res.pop("probe")
                                    if variant == "eager":
                                        probes[scen_name] = probe
                            row.update(res)
                            row["peak_gib"] = mem["peak_gib"]
                            if variant == "tensorrt":
                                row["device_mem_delta_gib"] = mem["delta_gib"]
                            log.info("%s / %s: %.1f fps (%.2f ms/frame)", scen_name, variant, row["fps"], row["ms_per_frame"])
                        except Exception as exc:  # a failed variant is a result, the run goes on
                            row["skipped"] = f"failed: {type(exc).__name__}: {str(exc).strip()[:300]}"
                            log.exception("%s / %s failed", scen_name, variant)
                        results.append(row)
                        row = None
                        save()
                        gc.collect()
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    if want_ratios:
                        if time.perf_counter() - t_start + 4 * ESTIMATE_S["eager"] > args.budget_s:
                            report["ratios"] = {"skipped": "time budget"}
                        else:
                            log.info("the paper's ratios on %s (eager) ...", scen_name)
                            try:
                                neg = prompt_embeds(components, seed=9)
                                report["ratios"] = run_paper_ratios(components, scenario, frames_in, pos, neg,
                                                                    args.size, timing)
                            except Exception as exc:
                                report["ratios"] = {"skipped": f"failed: {type(exc).__name__}: {exc}"[:400]}
                                log.exception("ratios failed")
                        save()
                    del components, pos, frames01, frames_in
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    except BudgetStop as stop:
        report["stopped"] = f"stopped early: {stop}"
        log.warning("stopped early (%s); writing what was measured", stop)
        if row is not None:  # the variant in progress: keep what it measured
            if "fps" in row:
                row["stopped"] = f"stopped during its later figures: {stop}"
            else:
                row["skipped"] = f"stopped: {stop}"
            results.append(row)
    finally:
        if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
            signal.setitimer(signal.ITIMER_REAL, 0)

    _ratios(results)
    report["targets"] = _targets(report, device, args)
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    save()
    print(json.dumps(report["env"]))
    print(_table(results))
    print(_summary(report))
    print(f"JSON: {out_path}")
    return 0


def _summary(report: dict[str, Any]) -> str:
    lines = []
    ratios = report.get("ratios") or {}
    if "stream_vs_sequential" in ratios:
        sv, sf = ratios["stream_vs_sequential"], ratios["self_vs_full_cfg"]
        lines.append(f"paper ratios ({ratios['variant']}, {ratios['steps']} steps): stream batch vs sequential "
                     f"{sv['ratio']:.2f}x ({sv['stream']['fps']:.1f} vs {sv['sequential']['fps']:.1f} fps); "
                     f"self vs full CFG {sf['ratio']:.2f}x ({sf['self']['fps']:.1f} vs {sf['full']['fps']:.1f} fps)")
    elif ratios:
        lines.append(f"paper ratios: {ratios.get('skipped')}")
    st = report.get("startup") or {}
    if st:
        parts = []
        for phase in ("cold", "warm"):
            p = st.get(phase) or {}
            if "build_to_first_frame_s" in p:
                fps_after = f", then {p['fps_after']:.1f} fps" if p.get("fps_after") else ""
                parts.append(f"{phase} {p['build_to_first_frame_s']:.1f} s build->first frame "
                             f"({p['process_s']:.1f} s from process start{fps_after})")
            elif p:
                parts.append(f"{phase}: {p.get('skipped') or p.get('failed')}")
        lines.append(f"start-up ({st.get('variant')}): " + ("; ".join(parts) or str(st.get("skipped"))))
    for t in report.get("targets") or []:
        if "target_fps" in t:
            lines.append(f"target {t['scenario']} >= {t['target_fps']:.0f} fps: {t['verdict']} "
                         f"(best {t['best_variant']} {t['best_fps']:.1f} fps)")
        else:
            lines.append(f"target {t['scenario']} / {t['variant']}: {t['target']}: {t['verdict']} ({t['value']:.2f}x)")
    if report.get("stopped"):
        lines.append(report["stopped"])
    return "\n".join(lines)


def _skip_reason(variant: str, device: torch.device, elapsed: float, budget: float) -> str | None:
    if variant == "graphs" and device.type != "cuda":
        return "CUDA graphs need a CUDA GPU"
    if variant in ("auto", "fp8"):
        how = accel_for(variant, device)
        if isinstance(how, str):
            return how
    if variant == "inductor" and device.type != "cuda":
        pass  # inductor runs on the CPU too (slowly): the budget decides
    if variant == "tensorrt":
        try:
            from stream_core.accel.tensorrt_backend import import_tensorrt, require_cuda

            import_tensorrt()
            require_cuda()
        except Exception as exc:  # the reason is the message
            return str(exc).split(". ")[0]
    if elapsed + ESTIMATE_S[variant] > budget:
        return f"time budget: {elapsed:.0f} s used of {budget:.0f} s, this variant may take {ESTIMATE_S[variant]:.0f} s"
    return None


def _ratios(results: list[dict[str, Any]]) -> None:
    for r in results:
        if r.get("skipped"):
            continue
        base = {x["variant"]: x for x in results if x["scenario"] == r["scenario"] and not x.get("skipped")}
        notes = []
        if "eager" in base and r["variant"] != "eager":
            notes.append(f"{r['fps'] / base['eager']['fps']:.2f}x eager")
        if "diffusers" in base and r["variant"] != "diffusers":
            notes.append(f"{r['fps'] / base['diffusers']['fps']:.2f}x diffusers")
        if "psnr_vs_eager_db" in r:
            notes.append(f"PSNR {r['psnr_vs_eager_db']:.1f} dB vs eager")
        r["speedup_note"] = ", ".join(notes)




def _controlnet_main(args: argparse.Namespace) -> int:
    out_dir = args.out.parent if args.out else (Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "out")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu_bench_controlnet.json"
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    wanted = tuple(v.strip() for v in args.variants.split(",") if v.strip() in CN_VARIANTS) or ("eager", "graphs")
    timing = {"warmup": 1, "frames": 2, "rounds": 2} if args.quick else None
    report = controlnet_bench(device, arch="tiny" if args.arch == "tiny" else "sd15", size=args.size, variants=wanted,
                              budget_s=args.budget_s, timing=timing,
                              save=lambda r: path.write_text(json.dumps(r, indent=1, default=str)))
    path.write_text(json.dumps(report, indent=1, default=str))
    for row in report["results"]:
        if "skipped" in row:
            print(f"{row['scenario']:<24} {row['variant']:<9} skipped: {row['skipped']}")
        else:
            print(f"{row['scenario']:<24} {row['variant']:<9} {row['fps_plain']:8.1f} fps plain  "
                  f"{row['fps_controlnet']:8.1f} fps with one ControlNet  ({row['cost_ratio']:.2f}x per frame)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
