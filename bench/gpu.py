"""GPU benchmark: img2img fps of our pipeline per backend vs diffusers, real SD architectures.

Builds the sd-turbo (SD 2.1 U-Net) and SD1.5 U-Net architectures from their config dicts with
random weights (no download: speed does not depend on the weight values), TAESD
(``AutoencoderTiny()`` defaults) and a CLIP text encoder of the right width, at 512x512 fp16, and
measures in one run:

* ``sd-turbo-1step``: 1 U-Net step per frame (sd-turbo img2img);
* ``sd15-lcm-4step``: 4 U-Net steps per frame (LCM on the SD1.5 architecture);

each with these variants:

* ``eager``: StreamPipeline + TorchRunner (acceleration: none);
* ``graphs``: acceleration: compile, CUDA graphs of the U-Net/TAESD calls;
* ``inductor``: acceleration: compile with torch.compile (inductor) under the graphs;
* ``tensorrt``: acceleration: tensorrt (skipped, with the reason, where TensorRT is missing);
* ``diffusers``: ``StableDiffusionImg2ImgPipeline`` (what ``AutoPipelineForImage2Image`` picks for
  these models) on the same modules, with num_inference_steps/strength chosen so it runs the same
  number of U-Net calls per frame (counted and reported).

fps = frames / wall time over rounds of consecutive frames (input frames already on the GPU,
output left on the GPU, synchronised at the end of each round); the median round is reported.
Peak VRAM is ``torch.cuda.max_memory_allocated`` over the variant (weights included; TensorRT's
own allocations are outside torch's allocator, so its figure adds the device-memory delta).

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
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # CPU smoke runs: see bench/onnx_cpu.py

import torch  # noqa: E402

log = logging.getLogger("bench.gpu")

SD21_UNET: dict[str, Any] = {  # stabilityai/sd-turbo (= stable-diffusion-2-1 U-Net) unet/config.json
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024, "use_linear_projection": True,
    "norm_num_groups": 32, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
}
SD15_UNET: dict[str, Any] = {**SD21_UNET, "attention_head_dim": 8, "cross_attention_dim": 768,
                             "use_linear_projection": False}
CLIP_H_TEXT: dict[str, Any] = {  # OpenCLIP ViT-H/14 text tower as SD 2.x uses it (23 layers)
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 1024,
}
CLIP_L_TEXT: dict[str, Any] = {  # CLIP ViT-L/14 text encoder (SD 1.x)
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
}
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
VARIANTS: tuple[str, ...] = ("eager", "graphs", "inductor", "tensorrt", "diffusers")
# rough worst-case seconds per variant, to stay inside --budget-s
ESTIMATE_S: dict[str, float] = {"eager": 25, "graphs": 30, "inductor": 200, "tensorrt": 600, "diffusers": 40}


# ---------------------------------------------------------------------------- models
def build_components(arch: str, device: torch.device, dtype: torch.dtype, tokenizer_dir: Path) -> Any:
    """Random-weight components of the given architecture, built directly on ``device``."""
    from diffusers import AutoencoderTiny, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from stream_core.models import Components
    from stream_core.tiny import SCHEDULER_CONFIG, make_tiny_model, write_tiny_tokenizer

    if arch == "tiny":
        from stream_core.models import ModelSpec, load_components

        folder = make_tiny_model(tokenizer_dir / "tiny-model")
        return load_components(ModelSpec(model=str(folder), device=str(device), dtype=str(dtype).replace("torch.", "")))
    unet_cfg, text_cfg = (SD21_UNET, CLIP_H_TEXT) if arch == "sd21" else (SD15_UNET, CLIP_L_TEXT)
    write_tiny_tokenizer(tokenizer_dir)  # never used to tokenise here: prompt embeddings are passed in
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_cfg)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
        vae = AutoencoderTiny()
    modules = (unet, text_encoder, vae)
    for m in modules:
        m.to(dtype=dtype).eval().requires_grad_(False)
    scheduler = LCMScheduler.from_config(SCHEDULER_CONFIG)
    info = {"arch": arch, "unet_params": sum(p.numel() for p in unet.parameters())}
    return Components(tokenizer, text_encoder, unet, vae, scheduler, device, dtype, info)


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
def run_ours(variant: str, components: Any, scenario: dict[str, Any], frames_in: list[torch.Tensor], pos: torch.Tensor,
             size: int, timing: dict[str, int], cache_dir: Path) -> dict[str, Any]:
    from stream_core.accel import AccelOptions, build_runner
    from stream_core.pipeline import StreamPipeline, StreamSettings
    from stream_core.runner import TorchRunner

    t_list = scenario["t_index_list"]
    n = len(t_list)
    settings = StreamSettings(width=size, height=size, t_index_list=t_list, cfg_type="none", frame_buffer_size=1, seed=2)
    t0 = time.perf_counter()
    if variant == "eager":
        runner: Any = TorchRunner(components.unet, components.vae)
    else:
        acceleration = {"graphs": "compile", "inductor": "compile", "tensorrt": "tensorrt"}[variant]
        options = AccelOptions(compile_mode={"graphs": "graphs", "inductor": "inductor"}.get(variant))
        runner = build_runner(components, acceleration, batch=n, width=size, height=size, cache_dir=cache_dir,
                              allow_build=True, steps=n, cfg_type="none", options=options)
    setup_s = time.perf_counter() - t0
    pipe = StreamPipeline(runner, components.scheduler, settings, pos)
    pipe(frames_in[0])  # primes the stream (n-1 extra calls), then one real call
    calls = None
    if variant == "eager":  # a hook on a compiled module would make dynamo recompile: eager only
        counter = UNetCounter(components.unet)
        pipe(frames_in[1])
        calls = counter.calls
        counter.close()
    res = time_frames(lambda k: pipe(frames_in[k % len(frames_in)]), components.device, **timing)
    out = pipe(frames_in[2])
    res.update(setup_s=setup_s, unet_batch=pipe.unet_batch, unet_steps_per_frame=n, finite=bool(torch.isfinite(out).all()))
    if calls is not None:
        res["unet_calls_per_frame"] = calls  # one stream-batched call of batch n
    return res


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--arch", choices=("real", "tiny"), default="real",
                    help="real: sd-turbo + SD1.5 architectures; tiny: the test model (smoke test)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list of " + ", ".join(SCENARIOS))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    ap.add_argument("--size", type=int, default=512, help="square image size (default 512)")
    ap.add_argument("--quick", action="store_true", help="few frames per round (a smoke run)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip variants that would not fit (default 480)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output (default $OUT/gpu_bench.json or out/gpu_bench.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("diffusers", "transformers", "torch._inductor", "torch._dynamo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    t_start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU; use --device cpu --arch tiny for a smoke test")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    out_path = args.out or (Path(os.environ["OUT"]) / "gpu_bench.json" if os.environ.get("OUT") else ROOT / "out" / "gpu_bench.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    timing = {"warmup": 3, "frames": 10, "rounds": 3} if args.quick else {"warmup": 10, "frames": 50, "rounds": 5}
    if device.type == "cpu":
        timing = {"warmup": 1, "frames": 3, "rounds": 3} if args.quick else {"warmup": 2, "frames": 10, "rounds": 3}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    report: dict[str, Any] = {"env": _env(device), "args": {k: str(v) for k, v in vars(args).items()},
                              "timing": timing, "results": []}
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
    # most informative first: cheap variants of every scenario, then the slow-to-build ones
    cheap = [v for v in variants if v not in ("inductor", "tensorrt")]
    slow = [v for v in variants if v in ("inductor", "tensorrt")]

    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
        tmpdir = Path(tmp)
        for phase in (cheap, slow):
            for scen_name in scenarios:
                scenario = SCENARIOS[scen_name]
                todo = [v for v in phase if not any(r["scenario"] == scen_name and r["variant"] == v for r in results)]
                if not todo:
                    continue
                arch = "tiny" if args.arch == "tiny" else scenario["arch"]
                log.info("building %s (%s) on %s", scen_name, arch, device)
                components = build_components(arch, device, dtype, tmpdir / f"tok-{scen_name}")
                pos = prompt_embeds(components)
                g = torch.Generator("cpu").manual_seed(5)
                frames01 = [torch.rand((1, 3, args.size, args.size), generator=g).to(device, dtype) for _ in range(8)]
                frames_in = [f * 2 - 1 for f in frames01]
                for variant in todo:
                    row: dict[str, Any] = {"scenario": scen_name, "variant": variant, "arch": arch}
                    elapsed = time.perf_counter() - t_start
                    reason = _skip_reason(variant, device, elapsed, args.budget_s)
                    if reason:
                        row["skipped"] = reason
                        log.info("%s / %s skipped: %s", scen_name, variant, reason)
                        results.append(row)
                        save()
                        continue
                    log.info("%s / %s ...", scen_name, variant)
                    try:
                        with _peak(device) as mem:
                            if variant == "diffusers":
                                res = run_diffusers(components, scenario, frames01, pos, timing)
                            else:
                                res = run_ours(variant, components, scenario, frames_in, pos, args.size, timing,
                                               tmpdir / "engines")
                        row.update(res)
                        row["peak_gib"] = mem["peak_gib"]
                        if variant == "tensorrt":
                            row["device_mem_delta_gib"] = mem["delta_gib"]
                        log.info("%s / %s: %.1f fps (%.2f ms/frame)", scen_name, variant, row["fps"], row["ms_per_frame"])
                    except Exception as exc:  # a failed variant is a result, the run goes on
                        row["skipped"] = f"failed: {type(exc).__name__}: {str(exc).strip()[:300]}"
                        log.exception("%s / %s failed", scen_name, variant)
                    results.append(row)
                    save()
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                del components, pos, frames01, frames_in
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    _ratios(results)
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    save()
    print(json.dumps(report["env"]))
    print(_table(results))
    print(f"JSON: {out_path}")
    return 0


def _skip_reason(variant: str, device: torch.device, elapsed: float, budget: float) -> str | None:
    if variant == "graphs" and device.type != "cuda":
        return "CUDA graphs need a CUDA GPU"
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
        r["speedup_note"] = ", ".join(notes)


if __name__ == "__main__":
    sys.exit(main())
