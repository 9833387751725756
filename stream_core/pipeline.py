"""The stream-batched diffusion pipeline (StreamDiffusion's algorithm, written from its maths).

Layout of the U-Net batch: ``n`` denoising stages x ``f`` frames per call, row ``i*f + j`` being
stage ``i`` of frame ``j``. Stage 0 holds the frames that just came in; stage ``i > 0`` holds frames
that entered ``i`` calls ago. One U-Net call advances every row by one LCM step, the rows of the last
stage leave as output, and the others shift down one stage. A frame therefore leaves ``n - 1`` calls
after it entered, and equals the sequential ``n``-step result for that frame.

Start-up: the buffer is primed by running the first input through the stream ``n - 1`` times, so
the first outputs are that frame's real denoised result (never a decode of an empty buffer).

With one step and ``self`` guidance, each frame slot's residual noise carries from call to call
(``S = N[0] + Delta`` of the previous call), as the reference's ``stock_noise`` does; ``reset``
starts it again from ``N[0]``.

Everything is created in ``__init__``; live changes are explicit setters that keep the buffer.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from stream_core.blend import Slerp, slerp
from stream_core.conditioning import EmbedStore, Morph, SeedNoise, check_mix
from stream_core.runner import ModelRunner
from stream_core.schedule import (
    NUM_INFERENCE_STEPS,
    check_t_index_list,
    step_scalars,
    strength_to_t_index_list,
)
from stream_core.similarity import SimilarityFilter
from stream_core.temporal import TemporalBank, check_latent_feedback, check_max_frames

CfgType = Literal["none", "full", "self", "initialize"]
CFG_TYPES: tuple[str, ...] = ("none", "full", "self", "initialize")


# step lists whose gathered scalar rows are kept (a strength fader spans at most 50)
SCALAR_ROWS_CACHE = 64
_STEP_FLOATS = ("alpha", "beta", "c_skip", "c_out", "ratio")  # the order of their rows in _step_rows

class RebuildRequired(ValueError):
    """A change that alters tensor shapes (steps, frame buffer, size, guidance mode, model)."""


@dataclass
class StreamSettings:
    width: int = 512
    height: int = 512
    t_index_list: Sequence[int] = (32, 45)
    frame_buffer_size: int = 1
    cfg_type: CfgType = "self"
    guidance_scale: float = 1.2
    delta: float = 1.0
    seed: int = 2
    add_noise: bool = True
    filter_threshold: float = 1.0  # >= 1 disables the similarity filter
    # temporal smoothing: each output latent becomes (1 - s) * new + s * previous output latent
    # (less flicker between frames, more ghosting on motion); 0 is off
    smoothing: float = 0.0
    filter_max_skip: int = 10
    filter_seed: int = 0
    # False: every frame goes through all n steps in its own call (n U-Net calls per frame, no
    # frame latency, lower throughput): the "sequential denoising" the stream batch is measured against
    denoising_batch: bool = True
    latent_channels: int = 4
    vae_scale: int = 8
    # temporal consistency (stream_core.temporal): the built size of the cached-attention bank
    # (0: no bank, the U-Net runs untouched), and its live settings
    temporal_max_frames: int = 0
    temporal_cache: bool = True
    temporal_frames: int | None = None  # None: the built maximum
    temporal_interval: int = 1
    temporal_injection: float = 0.0
    # graph-safe bank: no Python branch on live settings (captured graphs, torch.compile, export)
    temporal_static: bool = False
    # share of the previous output latent mixed into each new input latent before noising (0 off)
    latent_feedback: float = 0.0

    def check(self) -> None:
        """Validate everything up front, naming the bad value."""
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0 or v % self.vae_scale:
                raise ValueError(f"{name} should be a positive multiple of {self.vae_scale} but is {v!r}")
        self.t_index_list = check_t_index_list(self.t_index_list)
        if not isinstance(self.frame_buffer_size, int) or self.frame_buffer_size < 1:
            raise ValueError(f"frame_buffer_size should be an integer >= 1 but is {self.frame_buffer_size!r}")
        if self.cfg_type not in CFG_TYPES:
            raise ValueError(f"cfg_type should be one of {', '.join(CFG_TYPES)} but is {self.cfg_type!r}")
        _check_float("guidance_scale", self.guidance_scale)
        _check_float("delta", self.delta)
        _check_smoothing(self.smoothing)
        _check_seed(self.seed)
        check_max_frames(self.temporal_max_frames)
        check_latent_feedback(self.latent_feedback)


def _check_float(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} should be a finite number but is {v!r}")
    return float(v)


MAX_SMOOTHING = 0.95


def _check_smoothing(v: Any) -> float:
    s = _check_float("smoothing", v)
    if not 0.0 <= s <= MAX_SMOOTHING:
        raise ValueError(f"smoothing should be in [0, {MAX_SMOOTHING}] but is {v!r}")
    return s


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed should be an integer >= 0 but is {seed!r}")
    return seed


def make_noise(seed: int, n: int, channels: int, h: int, w: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The stream's noise contract: float32 from a CPU generator, shape (n, C, h, w). A
    ``generator`` (CPU) is re-seeded and used instead of a new one (same numbers)."""
    gen = (generator or torch.Generator("cpu")).manual_seed(int(seed))
    return torch.randn((n, channels, h, w), generator=gen, dtype=torch.float32)


class StreamPipeline:
    """Stream-batched img2img / txt2img over a :class:`ModelRunner`.

    Call with ``images`` shaped ``(f, 3, H, W)`` in [-1, 1] (or ``None`` for txt2img); returns
    ``(f, 3, H, W)`` in [-1, 1]. When the similarity filter skips a call, the previous output is
    returned again and nothing advances (``last_skipped`` is True).

    Device discipline: every tensor the pipeline keeps (noise and its per-seed cache, embeddings,
    the text batch, step scalars, guidance scalars, morph endpoints, blends) is made on
    ``runner.device`` in ``runner.dtype`` (guidance/smoothing scalars: 0-dim float32 on the device).
    Noise is drawn on a CPU generator (:func:`make_noise`) and moved once, when a seed is first
    used (to CUDA through pinned memory, non-blocking: no host wait). Embeddings handed in are checked and moved once per tensor object (:class:`EmbedStore`).

    Hot path for graph capture: :meth:`denoise` takes the encoded latents ``z`` (``(f, C, h, w)``;
    ``None`` for txt2img) and returns the output latents (smoothed, before decoding). Once the
    stream is primed (``primed``), it reads and writes only static buffers, updated in place
    (``_x_buffer``, ``_stock``, ``_wrap``, ``_noise_rows``, ``_text_batch``, the step-scalar rows,
    the 0-dim guidance/delta/smoothing scalars, ``_smooth_prev``), makes no host synchronisation
    and branches only on Python state that live setters do not change (mode, shapes). A live
    setter between calls writes those buffers in place, so a captured call sees the change.
    """

    def __init__(
        self,
        runner: ModelRunner,
        scheduler: Any,
        settings: StreamSettings,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None = None,
        controlnets: Sequence[Any] = (),
    ) -> None:
        settings.check()
        self.runner = runner
        self.scheduler = scheduler
        self.settings = settings
        self.device = torch.device(runner.device)
        self.dtype = runner.dtype
        self.n = len(settings.t_index_list)
        self.f = settings.frame_buffer_size
        self.cfg_type: str = settings.cfg_type
        self.latent_shape = (
            settings.latent_channels,
            settings.height // settings.vae_scale,
            settings.width // settings.vae_scale,
        )
        self.add_noise = bool(settings.add_noise)
        self.filter = SimilarityFilter(settings.filter_threshold, settings.filter_max_skip, settings.filter_seed)

        dev, dt = self.device, self.dtype
        rows = self.n * self.f
        c, h, w = self.latent_shape
        # rows of the negative text in the U-Net batch, ahead of the n*f positive rows
        self._uncond_rows = {"full": rows, "initialize": self.f}.get(self.cfg_type, 0)
        # static state of the stream, updated in place
        self._x_buffer = torch.zeros(((self.n - 1) * self.f, c, h, w), device=dev, dtype=dt)
        self._stock = torch.zeros((rows, c, h, w), device=dev, dtype=dt)
        # one step, self guidance: the residual noise's step, carried to the next call's stage 0
        self._wrap = torch.zeros((self.f, c, h, w), device=dev, dtype=dt)
        self._noise_rows = torch.zeros((rows, c, h, w), device=dev, dtype=dt)
        self._smooth_prev = torch.zeros((1, c, h, w), device=dev, dtype=dt)
        self._has_smooth_prev = False
        self._g = torch.zeros((), device=dev, dtype=torch.float32)
        self._delta = torch.zeros((), device=dev, dtype=torch.float32)
        self._smoothing = torch.zeros((), device=dev, dtype=torch.float32)
        self._primed = False
        self._last_output: torch.Tensor | None = None
        self.last_skipped = False
        self.calls = 0

        self.set_guidance_scale(settings.guidance_scale)
        self.set_delta(settings.delta)
        self.set_smoothing(settings.smoothing)

        self._embed_len: int | None = None
        self._embed_dim: int | None = None
        self._pos: torch.Tensor | None = None
        self._neg: torch.Tensor | None = None
        self._text_batch: torch.Tensor | None = None
        self._embeds = EmbedStore(self._as_embed)
        self.set_prompt_embeds(prompt_embeds, negative_prompt_embeds)

        gen = torch.Generator("cpu")  # re-seeded for each new seed (only this thread draws)
        self._seeds = SeedNoise(lambda seed: make_noise(seed, self.n, c, h, w, gen), dev, dt)
        self._morph: Morph | None = None
        self._prompt_pair: Slerp | None = None  # the prompt A/B crossfader's prepared slerp
        self.seed = _check_seed(settings.seed)
        self.seed_b = self.seed
        self.seed_mix = 0.0
        self._noise = self._seeds.get(self.seed)
        self._write_noise_rows()

        self._scalar_table = self._make_scalar_table()
        # per step list: the gathered rows of every scalar (a strength fader revisits the same
        # few lists, so a move costs six copies, not six gathers); bounded, on the device
        self._scalar_rows_cache: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._t_rows = torch.zeros((rows,), device=dev, dtype=torch.long)
        # the five float step scalars per row live in one buffer (a strength move is one copy)
        self._step_rows = torch.zeros((len(_STEP_FLOATS), rows, 1, 1, 1), device=dev, dtype=dt)
        self._alpha, self._beta, self._c_skip, self._c_out, self._ratio = self._step_rows.unbind(0)
        self.t_index_list: tuple[int, ...] = tuple(settings.t_index_list)
        self._set_scalars(self.t_index_list)
        self._init_temporal()
        self._init_controlnets(controlnets)

    # ------------------------------------------------------------------ shapes
    @staticmethod
    def batch_for(cfg_type: str, n: int, f: int) -> int:
        """Rows per U-Net call: n*f (none, self), (n+1)*f (initialize), 2n*f (full)."""
        return {"none": n * f, "self": n * f, "initialize": (n + 1) * f, "full": 2 * n * f}[cfg_type]

    @property
    def unet_batch(self) -> int:
        return self.batch_for(self.cfg_type, self.n, self.f)

    @property
    def latency_frames(self) -> int:
        """Calls between a frame entering and its result leaving (``n - 1``; 0 when sequential)."""
        return self.n - 1 if self.settings.denoising_batch else 0

    @property
    def primed(self) -> bool:
        return self._primed

    # ------------------------------------------------------------------ live setters: conditioning
    def set_prompt_embeds(self, prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor | None = None) -> None:
        """Replace the text conditioning; the negative one is kept when ``None`` is passed after
        the first call (zeros-free: a missing negative at construction means the empty prompt's
        embedding must be given by the caller for ``full``/``initialize`` modes)."""
        pos = self._embeds.get(prompt_embeds, "prompt_embeds")
        neg = self._negative(negative_prompt_embeds)
        self._set_text(pos, neg)

    def set_conditioning(
        self,
        prompt: torch.Tensor,
        prompt_b: torch.Tensor | None = None,
        mix: float = 0.0,
        negative: torch.Tensor | None = None,
    ) -> None:
        """Text conditioning from embedding handles (what the prompt encoder returned, any device
        or dtype): ``prompt``, or its slerp towards ``prompt_b`` at ``mix`` (the A/B crossfader);
        ``negative`` ``None`` keeps the current negative. Checked and moved once per handle; the
        blend is made on the pipeline's device. Nothing changes when anything is refused."""
        mix = check_mix("prompt_mix", mix)
        a = self._embeds.get(prompt, "prompt_embeds")
        pos = a
        if prompt_b is not None:
            b = self._embeds.get(prompt_b, "prompt_b embeddings")
            pair = self._prompt_pair
            if pair is None or pair.a is not a or pair.b is not b:  # a new A/B pair: prepared once
                pair = self._prompt_pair = Slerp(a, b)
            pos = pair.at(mix)
        self._set_text(pos, self._negative(negative))

    def _negative(self, negative: torch.Tensor | None) -> torch.Tensor | None:
        if negative is not None:
            return self._embeds.get(negative, "negative_prompt_embeds")
        if self._neg is not None:
            return self._neg
        if self.cfg_type in ("full", "initialize"):
            raise ValueError(f"cfg_type {self.cfg_type!r} needs negative_prompt_embeds (the empty prompt's at least)")
        return None

    def _set_text(self, pos: torch.Tensor, neg: torch.Tensor | None) -> None:
        if neg is not None and neg.shape != pos.shape:
            raise ValueError(f"negative embeddings {tuple(neg.shape)} do not match prompt embeddings {tuple(pos.shape)}")
        if pos is self._pos and neg is self._neg and self._text_batch is not None:
            return  # the same tensors: the text rows already hold them
        rows, u = self.n * self.f, self._uncond_rows
        if self._text_batch is None:
            self._text_batch = torch.empty((u + rows, *pos.shape[1:]), device=self.device, dtype=self.dtype)
        if u:
            self._text_batch[:u].copy_(neg.expand(u, -1, -1))
        self._text_batch[u:].copy_(pos.expand(rows, -1, -1))
        self._pos, self._neg = pos, neg

    @property
    def prompt_embeds(self) -> torch.Tensor:
        return self._pos

    @property
    def negative_prompt_embeds(self) -> torch.Tensor | None:
        return self._neg

    def _as_embed(self, e: torch.Tensor, name: str) -> torch.Tensor:
        """Check a new embedding and return it on the pipeline's device and dtype (run once per
        tensor object by :class:`EmbedStore`: the finiteness check waits for the device)."""
        if not isinstance(e, torch.Tensor):
            raise TypeError(f"{name} should be a tensor, got {type(e).__name__}")
        if e.dim() == 2:
            e = e.unsqueeze(0)
        if e.dim() != 3 or e.shape[0] != 1:
            raise ValueError(f"{name} should be shaped (1, tokens, dim) but is {tuple(e.shape)}")
        if self._embed_len is not None and (e.shape[1], e.shape[2]) != (self._embed_len, self._embed_dim):
            raise RebuildRequired(
                f"{name} shape {tuple(e.shape)} differs from the running (1, {self._embed_len}, {self._embed_dim})"
            )
        out = e.to(self.device, self.dtype, copy=True)
        # once per new embedding (one wait for the device); a meta tensor has no values to check
        if out.device.type != "meta" and not bool(torch.isfinite(out).all()):
            raise ValueError(f"{name} contains NaN or inf")
        if self._embed_len is None:
            self._embed_len, self._embed_dim = int(e.shape[1]), int(e.shape[2])
        return out

    # ------------------------------------------------------------------ live setters: noise
    def set_seed(self, seed: int) -> None:
        """New noise for every stage; the latent buffer is kept (no restart)."""
        self.set_seed_mix(seed, seed, 0.0)

    def set_seed_mix(self, seed: int, seed_b: int, mix: float) -> None:
        """The seed crossfader: seed's noise, seed B's, or their slerp at ``mix``, made on the
        device from the cached device copies of both seeds' noise."""
        seed, seed_b = _check_seed(seed), _check_seed(seed_b)
        noise = self._seeds.mix(seed, seed_b, mix)
        self._noise = noise
        self._write_noise_rows()
        self.seed, self.seed_b, self.seed_mix = seed, seed_b, float(mix)

    def noise_for_seed(self, seed: int) -> torch.Tensor:
        """The seed's stream noise on the pipeline's device and dtype (cached; do not modify)."""
        return self._seeds.get(_check_seed(seed))

    def set_noise(self, noise: torch.Tensor) -> None:
        """Set the per-stage noise directly (copied to the pipeline's device and dtype)."""
        expected = (self.n, *self.latent_shape)
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != expected:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise should be shaped {expected} but is {got}")
        self._noise = noise.to(self.device, self.dtype, copy=True)
        self._write_noise_rows()

    def _write_noise_rows(self) -> None:
        # row i*f + j is stage i's noise, for every frame lane j: one broadcast copy
        n, f = self.n, self.f
        self._noise_rows.view(n, f, *self._noise_rows.shape[1:]).copy_(self._noise.unsqueeze(1))

    @property
    def noise(self) -> torch.Tensor:
        return self._noise

    # ------------------------------------------------------------------ morphs
    def begin_morph(
        self,
        *,
        seeds: tuple[int, int, float] | None = None,
        conditioning: tuple[torch.Tensor, torch.Tensor | None, float, torch.Tensor | None] | None = None,
    ) -> None:
        """Start a transition from the current noise/conditioning towards ``seeds`` (seed, seed B,
        seed mix) and/or ``conditioning`` (prompt, prompt B or None, prompt mix, negative or None:
        the arguments of :meth:`set_conditioning`). ``None`` leaves that part alone. Both ends are
        made on the device here; :meth:`advance_morph` then only blends."""
        noise_to = None
        if seeds is not None:
            seed, seed_b, mix = seeds
            noise_to = self._seeds.mix(_check_seed(seed), _check_seed(seed_b), mix)
        pos_to = neg_to = None
        if conditioning is not None:
            prompt, prompt_b, mix, negative = conditioning
            mix = check_mix("prompt_mix", mix)
            pos_to = self._embeds.get(prompt, "prompt_embeds")
            if prompt_b is not None:
                pos_to = slerp(pos_to, self._embeds.get(prompt_b, "prompt_b embeddings"), mix)
            if negative is not None:
                neg_to = self._embeds.get(negative, "negative_prompt_embeds")
        self._morph = Morph(self._noise, noise_to, self._pos, pos_to, self._neg, neg_to)

    def advance_morph(self, u: float) -> None:
        """Blend noise and conditioning at progress ``u`` in [0, 1] (clamped)."""
        m = self._morph
        if m is None:
            return
        u = min(1.0, max(0.0, float(u)))
        noise = m.noise_at(u)
        if noise is not None:
            self._noise = noise
            self._write_noise_rows()
        embeds = m.embeds_at(u)
        if embeds is not None:
            pos, neg = embeds
            self._set_text(pos, neg if neg is not None else self._neg)

    def drop_morph_noise(self) -> None:
        """The noise stops morphing where it is (its parameters were taken over)."""
        if self._morph is not None:
            self._morph.noise_to = None

    def drop_morph_conditioning(self) -> None:
        if self._morph is not None:
            self._morph.pos_to = self._morph.neg_to = None

    def end_morph(self) -> None:
        self._morph = None

    @property
    def morphing_noise(self) -> bool:
        return self._morph is not None and self._morph.noise_to is not None

    @property
    def morphing_conditioning(self) -> bool:
        return self._morph is not None and self._morph.pos_to is not None

    # ------------------------------------------------------------------ live setters: knobs
    def set_guidance_scale(self, guidance_scale: float) -> None:
        self.guidance_scale = _check_float("guidance_scale", guidance_scale)
        self._g.fill_(self.guidance_scale)

    def set_delta(self, delta: float) -> None:
        self.delta = _check_float("delta", delta)
        self._delta.fill_(self.delta)

    def set_smoothing(self, smoothing: float) -> None:
        """Temporal smoothing in [0, 0.95]; applies from the next output on, from the real last one."""
        self.smoothing = _check_smoothing(smoothing)
        self._smoothing.fill_(self.smoothing)

    def set_t_index_list(self, t_index_list: Sequence[int]) -> None:
        lst = check_t_index_list(t_index_list)
        if len(lst) != self.n:
            raise RebuildRequired(
                f"t_index_list has {len(lst)} steps but the pipeline was built for {self.n}; "
                "changing the number of steps needs a rebuild"
            )
        if lst != self.t_index_list:
            self._set_scalars(lst)
            self.t_index_list = lst

    def set_strength(self, strength: float) -> None:
        """img2img strength in [0, 1]; see :func:`stream_core.schedule.strength_to_t_index_list`."""
        self.set_t_index_list(strength_to_t_index_list(strength, self.n))

    def set_filter(self, threshold: float, max_skip: int | None = None) -> None:
        self.filter.configure(threshold, max_skip)

    def check_rebuild(self, **cold: Any) -> None:
        """Raise :class:`RebuildRequired` naming the first cold setting that differs."""
        running = {
            "width": self.settings.width,
            "height": self.settings.height,
            "steps": self.n,
            "frame_buffer_size": self.f,
            "cfg_type": self.cfg_type,
        }
        for key, value in cold.items():
            if key not in running:
                raise KeyError(f"unknown cold setting {key!r}")
            if value != running[key]:
                raise RebuildRequired(f"{key}: wants {value!r} but the pipeline runs {running[key]!r}; needs a rebuild")

    def reset(self) -> None:
        """Forget the buffer: the next call primes it again from its input."""
        self._primed = False
        self._last_output = None
        self._has_smooth_prev = False
        self._wrap.zero_()
        self.filter.reset()
        self._reset_temporal()
        self._reset_control()

    # ------------------------------------------------------------------ internals
    def _make_scalar_table(self) -> dict[str, torch.Tensor]:
        """a, b, c_skip, c_out, a/b and the timestep for every index of the 50-step list, made
        once (on the CPU in float64, from the scheduler) and kept on the device."""
        sc = step_scalars(self.scheduler, range(NUM_INFERENCE_STEPS))
        alpha = sc.alpha.to(self.device, self.dtype)
        beta = sc.beta.to(self.device, self.dtype)
        return {
            "t": sc.timesteps.to(self.device),
            "alpha": alpha,
            "beta": beta,
            "c_skip": sc.c_skip.to(self.device, self.dtype),
            "c_out": sc.c_out.to(self.device, self.dtype),
            "ratio": alpha / beta,  # a_{i+1} / b_{i+1}: the stock-noise carry into a stage
        }

    def _set_scalars(self, t_index_list: Sequence[int]) -> None:
        """Gather the rows for ``t_index_list`` from the device table into the static rows."""
        f, tab = self.f, self._scalar_table
        key = tuple(int(k) for k in t_index_list)
        cached = self._scalar_rows_cache.get(key)
        if cached is None:
            floats = torch.stack([torch.stack([tab[name][k] for k in key]).repeat_interleave(f)
                                  for name in _STEP_FLOATS])
            cached = (torch.stack([tab["t"][k] for k in key]).repeat_interleave(f),
                      floats.view(self._step_rows.shape))
            self._scalar_rows_cache[key] = cached
            while len(self._scalar_rows_cache) > SCALAR_ROWS_CACHE:
                self._scalar_rows_cache.popitem(last=False)
        else:
            self._scalar_rows_cache.move_to_end(key)
        self._t_rows.copy_(cached[0])
        self._step_rows.copy_(cached[1])

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        expected = (self.f, 3, self.settings.height, self.settings.width)
        if not isinstance(images, torch.Tensor) or tuple(images.shape) != expected:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images should be shaped {expected} but are {got}")
        return images.to(self.device, self.dtype)

    # ------------------------------------------------------------------ the step maths (one implementation)
    def _stage_step(
        self, x: torch.Tensor, stock: torch.Tensor, rows: slice, uncond: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One guided LCM step for the stream rows ``rows`` (stage-major: row ``i*f + j`` is stage
        ``i`` of frame ``j``) holding latents ``x``. The U-Net also predicts the negative text for
        the first ``uncond`` rows (all rows in ``full``; stage 0 in ``initialize``).

        ``stock`` is those rows' residual noise S (``self``/``initialize``); in ``initialize`` its
        first ``uncond`` rows are replaced by the negative prediction. Returns the x0 estimates and
        the residual noise's step Delta (None when the mode has no residual noise)."""
        cfg = self.cfg_type
        t = self._t_rows[rows]
        u0 = self._uncond_rows
        text = self._text_batch[u0 - uncond : u0 + rows.stop - rows.start]
        self._temporal_call(rows, uncond)
        if uncond:
            eps = self._eps(torch.cat([x[:uncond], x]), torch.cat([t[:uncond], t]), text, rows, uncond)
            eu, ec = eps[:uncond], eps[uncond:]
        else:
            eu, ec = None, self._eps(x, t, text, rows, 0)
        self._temporal_call_done()
        if cfg == "full":
            e = eu + self._g * (ec - eu)
        elif cfg in ("self", "initialize"):
            if eu is not None:
                stock[:uncond].copy_(eu)
            s = self._delta * stock
            e = s + self._g * (ec - s)
        else:
            e = ec
        a, b, c_skip, c_out = self._alpha[rows], self._beta[rows], self._c_skip[rows], self._c_out[rows]
        x0_hat = c_out * (x - b * e) / a + c_skip * x
        if cfg not in ("self", "initialize"):
            return x0_hat, None
        bs = b * stock
        return x0_hat, c_out * (bs - b * e) / a + c_skip * bs

    def _next_stage(
        self, x0_hat: torch.Tensor, delta: torch.Tensor | None, rows: slice
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents (and residual noise) for the stream rows ``rows`` one stage on:
        x = a * x0_hat (+ b * N), S = (a / b) * Delta (+ N)."""
        x = self._alpha[rows] * x0_hat
        stock = None if delta is None else self._ratio[rows] * delta
        if self.add_noise:
            noise = self._noise_rows[rows]
            x = x + self._beta[rows] * noise
            if stock is not None:
                stock = stock + noise
        return x, stock

    def _stage0_stock(self, stock: torch.Tensor) -> None:
        """``self`` guidance: a new frame's residual noise is its noise N[0]. With one step it
        also carries the previous call's step (the reference's ``stock_noise = init_noise +
        delta_x``, with a_next = b_next = 1 for the last row)."""
        f = self.f
        if self.n == 1:
            torch.add(self._noise_rows[:f], self._wrap, out=stock[:f])
        else:
            stock[:f].copy_(self._noise_rows[:f])

    def _stream_step(self, x0_new: torch.Tensor) -> torch.Tensor:
        """One stream call given the new stage-0 latents; returns the last stage's x0 estimates."""
        f, n = self.f, self.n
        x = torch.cat([x0_new, self._x_buffer]) if n > 1 else x0_new
        self._shift_control()
        if self.cfg_type == "self":
            self._stage0_stock(self._stock)
        x0_hat, delta = self._stage_step(x, self._stock, slice(0, n * f), self._uncond_rows)
        if n > 1:
            nxt, stock = self._next_stage(x0_hat[:-f], None if delta is None else delta[:-f], slice(f, n * f))
            self._x_buffer.copy_(nxt)
            if stock is not None:
                self._stock[f:].copy_(stock)
        elif self.cfg_type == "self":
            self._wrap.copy_(delta)
        return x0_hat[(n - 1) * f :]

    def _sequential(self, x: torch.Tensor) -> torch.Tensor:
        """All n steps for the new frames now, one U-Net call per step (no buffer, no latency)."""
        f, n = self.f, self.n
        if n == 1:
            return self._stream_step(x)  # one step: the stream call is the sequential call
        stock = self._stock[:f]
        if self.cfg_type == "self":
            self._stage0_stock(stock)
        self._fill_control()
        for i in range(n):
            uncond = f if self.cfg_type == "full" or (self.cfg_type == "initialize" and i == 0) else 0
            x0_hat, delta = self._stage_step(x, stock, slice(i * f, (i + 1) * f), uncond)
            if i < n - 1:
                x, nxt_stock = self._next_stage(x0_hat, delta, slice((i + 1) * f, (i + 2) * f))
                if nxt_stock is not None:
                    stock.copy_(nxt_stock)
        return x0_hat

    def _initial_latents(self, z: torch.Tensor | None) -> torch.Tensor:
        f = self.f
        if z is None:  # txt2img: start from the noise itself
            return self._noise_rows[:f].clone()
        z = self._feed_back(z)
        return self._alpha[:f] * z + self._beta[:f] * self._noise_rows[:f]

    # ------------------------------------------------------------------ calls
    def denoise(self, z: torch.Tensor | None) -> torch.Tensor:
        """The step maths of one call: encoded latents ``z`` (``(f, C, h, w)``, or ``None`` for
        txt2img) in, output latents (smoothed) out; primes the stream on its first call."""
        x0 = self._initial_latents(z)
        self._temporal_frame()
        if not self.settings.denoising_batch:
            out_latents = self._sequential(x0)
        else:
            if not self._primed:
                # Prime: the first frames pass through every stage before the first output, so
                # the first outputs are their real result. Same static batch as every later call.
                for _ in range(self.n - 1):
                    self._stream_step(x0)
            out_latents = self._stream_step(x0)
        self._temporal_frame_done(out_latents)
        self._primed = True
        return self._smooth(out_latents)

    def admit(self, images: torch.Tensor, have_output: bool) -> torch.Tensor | None:
        """Check a call's input frames and ask the similarity filter: the frames on the pipeline's
        device and dtype, or None (``last_skipped`` set) when the filter skips this call and the
        caller should return its previous output (``have_output``: there is one)."""
        images = self._check_images(images)
        if self._primed and have_output and self.filter.should_skip(images):
            self.last_skipped = True
            return None
        if not self._primed:
            self.filter.reset()
            self.filter.should_skip(images)  # records the reference frame
        return images

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor | None = None, control: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """``control``: one entry per ControlNet (see :meth:`stage_control`); None: the input frames."""
        self.last_skipped = False
        self.check_control(control, images is not None)
        if images is not None:
            images = self.admit(images, self._last_output is not None)
            if images is None:
                return self._last_output
            self.stage_control(control, images)
            z = self.runner.encode(images)
        else:
            self.stage_control(control, None)
            z = None
        out_latents = self.denoise(z)
        self.calls += 1
        out = self.runner.decode(out_latents).clamp(-1.0, 1.0)
        self._last_output = out
        return out

    def _smooth(self, latents: torch.Tensor) -> torch.Tensor:
        """Exponential moving average over output latents, frame by frame (rows of one call in
        order): row <- row + s * (previous - row). The previous latent is always kept (in a static
        buffer), so turning smoothing on never blends in a stale frame; at s = 0 rows pass exactly."""
        prev = self._smooth_prev if self._has_smooth_prev else None
        rows = []
        for j in range(latents.shape[0]):
            row = latents[j : j + 1]
            if prev is not None:
                row = row + self._smoothing * (prev - row)
            rows.append(row)
            prev = row
        out = torch.cat(rows) if len(rows) > 1 else rows[0]
        self._smooth_prev.copy_(out[-1:])
        self._has_smooth_prev = True
        return out

    def txt2img(self) -> torch.Tensor:
        return self(None)

    # ------------------------------------------------------------------ ControlNets
    # Each ControlNet k keeps ``_cn_rows[k]`` (n*f, 3, H, W): row i*f + j is the control image of
    # the frame in stage i, slot j (RGB in [0, 1], the output's size), shifted down one stage per
    # stream step exactly like the latents, so every row is conditioned on its own frame.
    # ``_cn_new[k]`` holds this call's new frames. Inactive ControlNets (disabled or scale 0) are
    # never called and their rows are not kept; when one turns active again its rows are refilled
    # from the next frame. The active set is Python state: a compiled whole-frame graph keys on it.

    def _init_controlnets(self, controlnets: Sequence[Any]) -> None:
        from stream_core.controlnet import check_scale

        units = list(controlnets)
        have = int(getattr(self.runner, "controlnet_count", 0))
        if units and have != len(units):
            raise ValueError(f"{len(units)} ControlNet(s) configured but the runner drives {have}")
        dev, dt = self.device, self.dtype
        h, w = self.settings.height, self.settings.width
        rows = self.n * self.f
        self._cn_units = units
        self._cn_specs = [u.spec for u in units]
        self._cn_depth = [u.depth for u in units]
        self._cn_rows = [torch.zeros((rows, 3, h, w), device=dev, dtype=dt) for _ in units]
        self._cn_new = [torch.zeros((self.f, 3, h, w), device=dev, dtype=dt) for _ in units]
        self._cn_scale = [torch.zeros((), device=dev, dtype=torch.float32) for _ in units]
        self._cn_scale_values = [check_scale(sp.scale) for sp in self._cn_specs]
        self._cn_enabled_values = [bool(sp.enabled) for sp in self._cn_specs]
        for k, v in enumerate(self._cn_scale_values):
            self._cn_scale[k].fill_(v)
        self._cn_fill = [True] * len(units)  # rows to fill from the next frame (not carried yet)
        self._cn_active: tuple[int, ...] = self._active_controlnets()

    def _active_controlnets(self) -> tuple[int, ...]:
        return tuple(k for k in range(len(self._cn_units))
                     if self._cn_enabled_values[k] and self._cn_scale_values[k] > 0.0)

    @property
    def controlnet_count(self) -> int:
        return len(self._cn_units)

    @property
    def controlnet_scales(self) -> tuple[float, ...]:
        return tuple(self._cn_scale_values)

    @property
    def controlnet_enabled(self) -> tuple[bool, ...]:
        return tuple(self._cn_enabled_values)

    @property
    def controlnet_active(self) -> tuple[int, ...]:
        """Indices of the ControlNets that run (enabled, scale > 0): the part of the hot path's
        shape that live changes can alter."""
        return self._cn_active

    @property
    def controlnet_preprocessors(self) -> tuple[str, ...]:
        return tuple(sp.preprocessor for sp in self._cn_specs)

    def set_controlnet(self, index: int, *, scale: float | None = None, enabled: bool | None = None) -> None:
        """Live: a ControlNet's conditioning scale and/or on/off, from the next frame on. Scale 0
        or disabled: the ControlNet is not called. Nothing changes when a value is refused."""
        from stream_core.controlnet import check_scale

        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self._cn_units):
            raise ValueError(f"controlnet index should be 0..{len(self._cn_units) - 1} but is {index!r}"
                             if self._cn_units else f"no ControlNet is configured (index {index!r})")
        if scale is not None:
            scale = check_scale(scale)
        if enabled is not None and not isinstance(enabled, (bool, int)):
            raise ValueError(f"controlnet enabled should be true or false but is {enabled!r}")
        was = index in self._cn_active
        if scale is not None:
            self._cn_scale_values[index] = scale
            self._cn_scale[index].fill_(scale)
        if enabled is not None:
            self._cn_enabled_values[index] = bool(enabled)
        self._cn_active = self._active_controlnets()
        if not was and index in self._cn_active:
            self._cn_fill[index] = True

    def check_control(self, control: Sequence[torch.Tensor | None] | None, have_images: bool) -> None:
        """Validate a call's control argument before anything changes (see :meth:`stage_control`)."""
        count = len(self._cn_units)
        if control is None:
            entries: list[Any] = [None] * count
        else:
            entries = list(control)
            if len(entries) != count:
                raise ValueError(f"control should have one entry per ControlNet ({count}) but has {len(entries)}")
        for k, c in enumerate(entries):
            pre = self._cn_specs[k].preprocessor
            if c is None:
                if pre == "canny":
                    raise ValueError(f"ControlNet {k} (canny) needs its edge image: the caller makes it; got None")
                if not have_images:
                    raise ValueError(f"ControlNet {k} has no control image: txt2img has no input frame to use")
                continue
            if not isinstance(c, torch.Tensor) or c.dim() != 4 or c.shape[0] != self.f or c.shape[1] != 3:
                got = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
                raise ValueError(f"control image {k} should be shaped ({self.f}, 3, H, W) in [0, 1] but is {got}")
            if not c.is_floating_point():
                raise ValueError(f"control image {k} should be a float tensor in [0, 1] but is {c.dtype}")

    def stage_control(self, control: Sequence[torch.Tensor | None] | None, images: torch.Tensor | None) -> None:
        """Put this call's control images (one per ControlNet: an ``(f, 3, H', W')`` tensor in
        [0, 1], any size, or None for the input ``images`` in [-1, 1]) into the static buffers,
        resized to the output size and, for ``depth``, through the depth model, on the device.
        Only the active ControlNets' images are made. Called once per processed call, before
        :meth:`denoise`."""
        if not self._cn_units:
            return
        from stream_core.controlnet import resize_control

        entries = [None] * len(self._cn_units) if control is None else list(control)
        h, w = self.settings.height, self.settings.width
        for k in self._cn_active:
            c = entries[k]
            if c is None:
                if images is None:
                    raise ValueError(f"ControlNet {k} has no control image: txt2img has no input frame to use")
                src = (images.to(self.device, self.dtype) + 1.0) * 0.5
            else:
                src = resize_control(c.to(self.device, self.dtype), h, w)
            depth = self._cn_depth[k]
            if self._cn_specs[k].preprocessor == "depth" and depth is not None:
                src = depth(src).to(self.dtype)
            self._cn_new[k].copy_(src)
            if self._cn_fill[k]:
                self._cn_rows[k].copy_(self._cn_new[k].repeat(self.n, 1, 1, 1))
                self._cn_fill[k] = False

    def _shift_control(self) -> None:
        """One stream step: every active ControlNet's rows move down one stage; the new frames
        take stage 0 (the same shift as the latent buffer)."""
        f = self.f
        for k in self._cn_active:
            rows = self._cn_rows[k]
            if self.n > 1:
                rows[f:].copy_(rows[:-f].clone())
            rows[:f].copy_(self._cn_new[k])

    def _fill_control(self) -> None:
        """Sequential denoising: every stage of the new frames uses their own control image."""
        for k in self._cn_active:
            self._cn_rows[k].copy_(self._cn_new[k].repeat(self.n, 1, 1, 1))

    def _reset_control(self) -> None:
        for k in range(len(self._cn_units)):
            self._cn_rows[k].zero_()
            self._cn_fill[k] = True

    def _eps(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, rows: slice, uncond: int) -> torch.Tensor:
        """The U-Net's noise prediction for a batch whose first ``uncond`` rows are the negative
        pass of the stream rows ``rows[:uncond]``, then the stream rows ``rows``. With active
        ControlNets, one call per ControlNet for the whole batch (each row with its own frame's
        control image and its own text embedding); their residuals add."""
        if not self._cn_active:
            return self.runner.unet(x, t, text)
        combined = getattr(self.runner, "unet_controlled", None)
        if combined is not None:  # a runner with every ControlNet inside its U-Net graph
            conds: list[torch.Tensor | None] = [None] * len(self._cn_units)
            scales: list[torch.Tensor | None] = [None] * len(self._cn_units)
            for k in self._cn_active:
                cond = self._cn_rows[k][rows]
                conds[k] = torch.cat([cond[:uncond], cond]) if uncond else cond
                scales[k] = self._cn_scale[k]
            return combined(x, t, text, conds, scales)
        residuals: list[torch.Tensor] | None = None
        for k in self._cn_active:
            cond = self._cn_rows[k][rows]
            if uncond:
                cond = torch.cat([cond[:uncond], cond])
            r = self.runner.controlnet(k, x, t, text, cond, self._cn_scale[k])
            residuals = list(r) if residuals is None else [a + b for a, b in zip(residuals, r, strict=True)]
        return self.runner.unet_residuals(x, t, text, residuals)

    # ------------------------------------------------------------------ temporal consistency
    # Cached attention and feature injection live in stream_core.temporal (a bank installed as the
    # U-Net's self-attention processors); latent feedback is here. These hooks are the whole of
    # the pipeline's part: set up, per frame, per U-Net call, reset, live setters.
    def _init_temporal(self) -> None:
        s = self.settings
        dev, dt = self.device, self.dtype
        c, h, w = self.latent_shape
        self._feedback = torch.zeros((), device=dev, dtype=dt)
        self._fb_prev = torch.zeros((1, c, h, w), device=dev, dtype=dt)
        self._has_fb_prev = False
        self.set_latent_feedback(s.latent_feedback)
        self.temporal: TemporalBank | None = None
        if s.temporal_max_frames:
            unet, compiled = _unet_module(self.runner)
            self.temporal = TemporalBank(
                unet, self.n * self.f, (h, w), s.temporal_max_frames, dev, dt,
                cache=s.temporal_cache, frames=s.temporal_frames, interval=s.temporal_interval,
                injection=s.temporal_injection, static=s.temporal_static or compiled is not None,
            )
            if compiled is not None:  # capture / compile its U-Net calls again, with the bank
                try:
                    compiled.attach_temporal_bank(self.temporal)
                except Exception as exc:
                    self.temporal.uninstall()
                    raise RebuildRequired(f"the temporal bank under {type(compiled).__name__}: {exc}") from exc

    def _reset_temporal(self) -> None:
        self._has_fb_prev = False
        if self.temporal is not None:
            self.temporal.reset()

    def _feed_back(self, z: torch.Tensor) -> torch.Tensor:
        """Latent feedback: z <- z + fb * (previous output latent - z); exact z at fb = 0."""
        if not self._has_fb_prev:
            return z
        return z + self._feedback * (self._fb_prev - z)

    def _temporal_frame(self) -> None:
        if self.temporal is not None:
            self.temporal.begin_frame(fill=not self._primed)

    def _temporal_frame_done(self, out_latents: torch.Tensor) -> None:
        self._fb_prev.copy_(out_latents[-1:])
        self._has_fb_prev = True
        if self.temporal is not None:
            self.temporal.end_frame()

    def _temporal_call(self, rows: slice, uncond: int) -> None:
        if self.temporal is not None:
            self.temporal.begin_call(rows.start, rows.stop - rows.start, uncond)

    def _temporal_call_done(self) -> None:
        if self.temporal is not None:
            self.temporal.end_call()

    def set_latent_feedback(self, feedback: float) -> None:
        """Share (0..0.9) of the previous output latent mixed into the next input latent."""
        self.latent_feedback = check_latent_feedback(feedback)
        self._feedback.fill_(self.latent_feedback)

    def _bank(self, what: str) -> TemporalBank:
        if self.temporal is None:
            raise RebuildRequired(
                f"{what}: the pipeline was built without a temporal bank (temporal max_frames 0); "
                "set temporal.max_frames (1..4) and restart"
            )
        return self.temporal

    def set_temporal_cache(self, on: bool) -> None:
        self._bank("temporal cache").set_cache(on)

    def set_temporal_frames(self, frames: int) -> None:
        self._bank("temporal frames").set_frames(frames)

    def set_temporal_interval(self, interval: int) -> None:
        self._bank("temporal interval").set_interval(interval)

    def set_temporal_injection(self, strength: float) -> None:
        self._bank("temporal injection").set_injection(strength)


def _unet_module(runner: Any) -> tuple[Any, Any]:
    """The diffusers U-Net the bank installs its processors in, and the compiled runner (CUDA
    graphs / inductor) that runs it, if any: that runner then captures or compiles its U-Net calls
    again with the bank in place (``CompiledRunner.attach_temporal_bank``) and the bank runs
    static. ONNX Runtime / TensorRT runners (``GraphRunner``) built with the bank's graph give a
    weightless copy of the U-Net to lay the bank out over, and the bank adopts their graph inputs
    (``GraphRunner.attach_temporal_bank``). Runners whose U-Net was exported without the bank
    (ahead-of-time packages, graphs built for no bank) are refused."""
    for obj in (runner, getattr(runner, "inner", None)):
        if obj is None:
            continue
        if getattr(obj, "attach_temporal_bank", None) is not None:
            try:
                return obj.temporal_unet(), obj
            except Exception as exc:
                raise RebuildRequired(str(exc)) from exc
        unet = getattr(obj, "unet_model", None)
        if unet is not None and hasattr(unet, "set_attn_processor") and not hasattr(obj, "base"):
            return unet, None
    raise RebuildRequired(
        f"the temporal bank lives in the U-Net's attention (acceleration none or compile, or onnxruntime / "
        f"tensorrt built with it); {type(runner).__name__} runs a U-Net without it: set temporal.max_frames to 0 or use "
        "acceleration none or compile"
    )
