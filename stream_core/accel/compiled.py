"""``acceleration: compile``: CUDA graphs of the three calls, optionally over torch.compile.

On CUDA each call (U-Net, TAESD encode, decode) is captured once into a CUDA graph at its static
shapes: later calls copy the inputs into the captured input buffers, replay the graph, and return a
copy of the captured output. That removes the per-kernel launch cost (the eager U-Net launches
hundreds of small kernels per call) without changing the maths. ``compile_mode`` adds torch.compile
(inductor) under the graphs for fused kernels, at the price of minutes of compiling at start-up.

On the CPU there are no CUDA graphs: ``compile`` means torch.compile (inductor, which needs a
C++ compiler). If compiling or the first run fails, a :class:`BackendUnavailableError` says why;
there is no silent fall back to eager.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from stream_core.accel.errors import BackendUnavailableError
from stream_core.runner import (
    TorchRunner,
    controlnet_residuals,
    unet_with_residuals,
    vae_decode,
    vae_encode,
)

log = logging.getLogger(__name__)

# compile_mode -> torch.compile mode (None: no torch.compile); "aot" compiles with AOTInductor
# into package files instead (stream_core.accel.aot: later starts load them and trace nothing)
COMPILE_MODES: dict[str, str | None] = {
    "graphs": None,
    "inductor": "default",
    "max-autotune": "max-autotune-no-cudagraphs",
    "aot": "aot",
}


#: U-Net attention kernels: ``sdpa`` (torch's fused scaled_dot_product_attention, diffusers'
#: default) or ``math`` (the explicit softmax(QK^T)V of diffusers' classic processor)
ATTENTIONS: tuple[str, ...] = ("sdpa", "math")


def set_attention(unet: Any, attention: str) -> None:
    """Give every attention layer of ``unet`` the processor for ``attention`` (see ATTENTIONS)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if hasattr(unet, "set_attn_processor"):
        unet.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())


class CudaGraphCall:
    """``fn(*tensors) -> tensor`` captured into a CUDA graph on first use (static shapes)."""

    def __init__(self, fn: Callable[..., torch.Tensor], name: str, pool: Any = None, warmup: int = 2) -> None:
        self.fn = fn
        self.name = name
        self.pool = pool
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_in: list[torch.Tensor] = []
        self.static_out: Any = None

    def _check(self, args: tuple[torch.Tensor, ...]) -> None:
        for i, (a, s) in enumerate(zip(args, self.static_in, strict=True)):
            if a.shape != s.shape:
                raise ValueError(
                    f"{self.name}: argument {i} is shaped {tuple(a.shape)} but the CUDA graph was captured "
                    f"for {tuple(s.shape)}; a new shape needs a new runner"
                )

    def _capture(self, args: tuple[torch.Tensor, ...]) -> None:
        t0 = time.perf_counter()
        self.static_in = [a.detach().clone() for a in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.fn(*self.static_in)
        self.graph = graph
        self.static_out = out
        log.info("%s: CUDA graph captured in %.1f s", self.name, time.perf_counter() - t0)

    @torch.inference_mode()
    def __call__(self, *args: torch.Tensor) -> Any:
        if self.graph is None:
            self._capture(args)
        else:
            self._check(args)
            for s, a in zip(self.static_in, args, strict=True):
                s.copy_(a, non_blocking=True)
        assert self.graph is not None and self.static_out is not None
        self.graph.replay()
        if isinstance(self.static_out, (list, tuple)):  # a ControlNet's residuals
            return [t.clone() for t in self.static_out]
        return self.static_out.clone()


def _control_example(latents: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A control image per U-Net row (the example frame in [0, 1]) and a 0-dim scale of 1."""
    cond = ((images[:1] + 1) * 0.5).expand(latents.shape[0], -1, -1, -1).contiguous()
    return cond, torch.ones((), device=latents.device, dtype=torch.float32)


class _BankGraphCall(CudaGraphCall):
    """A CUDA-graph U-Net call over a temporal bank's processors: keeps what they recorded at
    capture (where every replay writes) and gives it back to the bank after each replay, so the
    bank reads this call's tensors even when another graphed U-Net call (with / without
    ControlNet residuals) was captured after it."""

    def __init__(self, fn: Callable[..., torch.Tensor], name: str, bank: Any) -> None:
        super().__init__(fn, name)
        self.bank = bank
        self.recorded: list[Any] | None = None

    def _capture(self, args: tuple[torch.Tensor, ...]) -> None:
        super()._capture(args)
        self.recorded = list(self.bank.fresh)

    @torch.inference_mode()
    def __call__(self, *args: torch.Tensor) -> Any:
        out = super().__call__(*args)
        if self.recorded is not None:
            self.bank.fresh[:] = self.recorded
        return out


class CompiledRunner:
    """TorchRunner maths with CUDA graphs and/or torch.compile (see the module docstring)."""

    def __init__(self, unet: Any, vae: Any, *, compile_mode: str | None = None, cuda_graphs: bool | None = None,
                 channels_last: bool = False, attention: str = "sdpa", controlnets: Sequence[Any] = ()) -> None:
        if attention not in ATTENTIONS:
            raise ValueError(f"attention should be one of {', '.join(ATTENTIONS)} but is {attention!r}")
        set_attention(unet, attention)
        for cn in controlnets:
            set_attention(cn, attention)
        if channels_last:
            # NHWC activations: convolutions pick their channels-last kernels (an option chosen by
            # measurement, see docs/acceleration.md); the maths is unchanged
            unet.to(memory_format=torch.channels_last)
            vae.to(memory_format=torch.channels_last)
            for cn in controlnets:
                cn.to(memory_format=torch.channels_last)
        self.base = TorchRunner(unet, vae, controlnets)
        self.device = self.base.device
        self.dtype = self.base.dtype
        on_cuda = self.device.type == "cuda"
        if compile_mode is None:
            compile_mode = "graphs" if on_cuda else "inductor"
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode should be one of {', '.join(COMPILE_MODES)} but is {compile_mode!r}")
        if cuda_graphs is None:
            cuda_graphs = on_cuda
        if cuda_graphs and not on_cuda:
            raise BackendUnavailableError(
                f"CUDA graphs need the model on a CUDA GPU, but it is on {self.device}; "
                "on the CPU, acceleration 'compile' means torch.compile (compile_mode: inductor)"
            )
        if not cuda_graphs and COMPILE_MODES[compile_mode] is None:
            raise ValueError("compile_mode 'graphs' without CUDA graphs would change nothing; pick inductor")
        self.compile_mode = compile_mode
        self.cuda_graphs = cuda_graphs
        self.channels_last = channels_last
        self.attention = attention
        self.artefacts: Any = None  # CompiledArtefacts when inductor's caches persist (set by build_runner)
        self.info = {"compile_mode": compile_mode, "cuda_graphs": cuda_graphs, "channels_last": channels_last,
                     "attention": attention}

        unet_fn: Callable[..., torch.Tensor] = self._unet_eager
        enc_fn: Callable[..., torch.Tensor] = self._encode_eager
        dec_fn: Callable[..., torch.Tensor] = self._decode_eager
        mode = COMPILE_MODES[compile_mode]
        self._aot: list[Any] = []
        if mode == "aot":
            from stream_core.accel.aot import AotCall

            self._aot = [AotCall(unet_fn, "unet", [unet]), AotCall(enc_fn, "vae_enc", [vae]),
                         AotCall(dec_fn, "vae_dec", [vae])]
            unet_fn, enc_fn, dec_fn = self._aot
        elif mode is not None:
            unet_fn = torch.compile(unet_fn, mode=mode, dynamic=False)
            enc_fn = torch.compile(enc_fn, mode=mode, dynamic=False)
            dec_fn = torch.compile(dec_fn, mode=mode, dynamic=False)
        # ControlNets: one call per ControlNet, and the U-Net taking their residuals (static shapes too)
        cn_fns: list[Callable[..., Any]] = [self._controlnet_body(k) for k in range(self.base.controlnet_count)]
        res_fn: Callable[..., torch.Tensor] = self._unet_res_eager
        if mode == "aot" and cn_fns:
            from stream_core.accel.aot import AotCall

            cn_aot = [AotCall(fn, f"controlnet{k}", [self.base.controlnet_models[k]], single=False)
                      for k, fn in enumerate(cn_fns)]
            res_aot = AotCall(res_fn, "unet_res", [unet])
            self._aot += [*cn_aot, res_aot]
            cn_fns, res_fn = list(cn_aot), res_aot
        elif mode is not None and mode != "aot":
            cn_fns = [torch.compile(fn, mode=mode, dynamic=False) for fn in cn_fns]
            res_fn = torch.compile(res_fn, mode=mode, dynamic=False)
        if cuda_graphs:
            # one private memory pool per graph: the pipeline replays them in another order
            # (encode, unet, decode) than they are captured in, so they must not share one
            self._unet_call: Callable[..., torch.Tensor] = CudaGraphCall(unet_fn, "unet")
            self._enc_call: Callable[..., torch.Tensor] = CudaGraphCall(enc_fn, "vae_enc")
            self._dec_call: Callable[..., torch.Tensor] = CudaGraphCall(dec_fn, "vae_dec")
            self._cn_calls: list[Callable[..., Any]] = [CudaGraphCall(fn, f"controlnet{k}") for k, fn in enumerate(cn_fns)]
            self._unet_res_call: Callable[..., torch.Tensor] = CudaGraphCall(res_fn, "unet_res")
        else:
            self._unet_call, self._enc_call, self._dec_call = unet_fn, enc_fn, dec_fn
            self._cn_calls, self._unet_res_call = cn_fns, res_fn

    def temporal_unet(self) -> Any:
        """The U-Net a temporal bank (``stream_core.temporal``) installs its processors in.
        Ahead-of-time packages hold a U-Net exported without the bank: refused."""
        if self.compile_mode == "aot":
            raise BackendUnavailableError(
                "the temporal bank lives in the U-Net's attention, but compile_mode aot runs a U-Net exported "
                "ahead of time without it: use compile_mode inductor or graphs (acceleration auto picks "
                "inductor when a temporal bank is configured)"
            )
        return self.base.unet_model

    def attach_temporal_bank(self, bank: Any) -> None:
        """``bank`` was installed in the U-Net's self-attention (static mode): capture (CUDA
        graphs) or compile (inductor: its guards see the new processors) both U-Net calls again
        with it, now, at start-up, inside a bank call, so no U-Net variant (with or without
        ControlNet residuals) is captured or compiled for the first time mid-show. Each captured
        call keeps the tensors the bank's processors recorded during its capture and hands them
        back to the bank after every replay (a replay runs no Python)."""
        self.temporal_unet()
        if self.cuda_graphs:
            self._unet_call = _BankGraphCall(self._unet_call.fn, "unet", bank)
            self._unet_res_call = _BankGraphCall(self._unet_res_call.fn, "unet_res", bank)
        examples = getattr(self, "_examples", None)
        if examples is None:  # never warmed up: the first frame captures / compiles
            return
        latents, timesteps, text, images = examples
        uncond = int(latents.shape[0]) - int(bank.rows)
        if uncond < 0:
            return  # another batch than the stream's (a test runner): the first frame does it
        cache = contextlib.nullcontext()
        if self.artefacts is not None:  # compiled with the key's persisted inductor caches
            from stream_core.accel.compile_cache import inductor_cache

            cache = inductor_cache(self.artefacts.folder)
        t0 = time.perf_counter()
        with cache, torch.inference_mode():
            bank.begin_call(0, bank.rows, uncond)
            try:
                self.unet(latents, timesteps, text)
                if self.controlnet_count:
                    self._unet_res_example(latents, timesteps, text, images)
            finally:
                bank.abandon_call()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        log.info("U-Net calls %s with the temporal bank in %.1f s",
                 "compiled" if COMPILE_MODES[self.compile_mode] is not None else "captured", time.perf_counter() - t0)

    def set_package_folder(self, folder: Any) -> None:
        """Where ``compile_mode: aot`` keeps (and finds) its packages: ``<folder>/<call>.pt2``."""
        for call in self._aot:
            call.folder = Path(folder)

    @property
    def aot_origin(self) -> str | None:
        """``loaded`` when every ahead-of-time package came from disk, ``compiled`` when any was
        built by this process, None before the first call or without ``aot``."""
        origins = {call.origin for call in self._aot}
        if not self._aot or None in origins:
            return None
        return "compiled" if "compiled" in origins else "loaded"

    # eager bodies (what gets compiled / captured)
    def _unet_eager(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        return self.base.unet_model(latents, timesteps, encoder_hidden_states=text_embeds, return_dict=False)[0]

    def _controlnet_body(self, k: int) -> Callable[..., list[torch.Tensor]]:
        model = self.base.controlnet_models[k]

        def body(latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor, cond: torch.Tensor,
                 scale: torch.Tensor) -> list[torch.Tensor]:
            return controlnet_residuals(model, latents, timesteps, text_embeds, cond, scale)

        return body

    def _unet_res_eager(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                        *residuals: torch.Tensor) -> torch.Tensor:
        return unet_with_residuals(self.base.unet_model, latents, timesteps, text_embeds, residuals)

    @property
    def controlnet_count(self) -> int:
        return self.base.controlnet_count

    @torch.inference_mode()
    def controlnet(self, index: int, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                   cond: torch.Tensor, scale: torch.Tensor) -> list[torch.Tensor]:
        return self._cn_calls[index](latents, timesteps, text_embeds, cond, scale)

    @torch.inference_mode()
    def unet_residuals(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                       residuals: Sequence[torch.Tensor]) -> torch.Tensor:
        return self._unet_res_call(latents, timesteps, text_embeds, *residuals)

    def _encode_eager(self, images: torch.Tensor) -> torch.Tensor:
        return vae_encode(self.base.vae, images, self.base.scaling_factor)

    def _decode_eager(self, latents: torch.Tensor) -> torch.Tensor:
        return vae_decode(self.base.vae, latents, self.base.scaling_factor)

    @torch.inference_mode()
    def unet(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        return self._unet_call(latents, timesteps, text_embeds)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._enc_call(images)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._dec_call(latents)

    def _unet_res_example(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                          images: torch.Tensor) -> torch.Tensor:
        """One call of the U-Net taking residuals, with an eager ControlNet's residuals of the
        example frame (what compiles / captures that call)."""
        cond, scale = _control_example(latents, images)
        residuals = self.base.controlnet(0, latents, timesteps, text_embeds, cond, scale)
        return self.unet_residuals(latents, timesteps, text_embeds, residuals)

    def warm_up(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                images: torch.Tensor) -> float:
        """Compile/capture every call now (not on the first live frame). Returns seconds taken.

        Failures of torch.compile (no C++ compiler, unsupported op, ...) become a
        :class:`BackendUnavailableError` naming the cause.
        """
        t0 = time.perf_counter()
        # kept: a temporal bank attached later captures / compiles the U-Net calls again with them
        self._examples = (latents, timesteps, text_embeds, images)
        what = "compiling" if COMPILE_MODES[self.compile_mode] is not None else "capturing"
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("unet", lambda: self.unet(latents, timesteps, text_embeds)),
            ("vae_enc", lambda: self.encode(images)),
            ("vae_dec", lambda: self.decode(self.base.encode(images))),
        ]
        if self.controlnet_count:
            cond, scale = _control_example(latents, images)
            for k in range(self.controlnet_count):
                steps.append((f"controlnet{k}", lambda k=k: self.controlnet(k, latents, timesteps, text_embeds, cond,
                                                                           scale)))
            steps.append(("unet_res", lambda: self._unet_res_example(latents, timesteps, text_embeds, images)))
        try:
            for i, (name, call) in enumerate(steps, 1):
                t1 = time.perf_counter()
                log.info("%s %s (%d/%d) ...", what, name, i, len(steps))
                call()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                log.info("%s ready in %.1f s (%.1f s elapsed)", name, time.perf_counter() - t1,
                         time.perf_counter() - t0)
        except BackendUnavailableError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
            hint = ""
            if self.device.type == "cpu":
                hint = (" torch.compile on the CPU needs a working C++ compiler (g++/clang, or MSVC on "
                        "Windows); use acceleration: none or onnxruntime instead.")
            raise BackendUnavailableError(
                f"acceleration 'compile' ({self.compile_mode}) does not work here: {type(exc).__name__}: {first}.{hint}"
            ) from exc
        dt = time.perf_counter() - t0
        log.info("compile backend ready (%s, CUDA graphs %s) in %.1f s", self.compile_mode,
                 "on" if self.cuda_graphs else "off", dt)
        return dt
