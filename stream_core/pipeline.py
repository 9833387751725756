"""The stream-batched diffusion pipeline (StreamDiffusion's algorithm, written from its maths).

Layout of the U-Net batch: ``n`` denoising stages x ``f`` frames per call, row ``i*f + j`` being
stage ``i`` of frame ``j``. Stage 0 holds the frames that just came in; stage ``i > 0`` holds frames
that entered ``i`` calls ago. One U-Net call advances every row by one LCM step, the rows of the last
stage leave as output, and the others shift down one stage. A frame therefore leaves ``n - 1`` calls
after it entered, and equals the sequential ``n``-step result for that frame.

Start-up: the buffer is primed by running the first input through the stream ``n - 1`` times, so
the first outputs are that frame's real denoised result (never a decode of an empty buffer).

Everything is created in ``__init__``; live changes are explicit setters that keep the buffer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from stream_core.runner import ModelRunner
from stream_core.schedule import check_t_index_list, step_scalars, strength_to_t_index_list
from stream_core.similarity import SimilarityFilter

CfgType = Literal["none", "full", "self", "initialize"]
CFG_TYPES: tuple[str, ...] = ("none", "full", "self", "initialize")


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


def make_noise(seed: int, n: int, channels: int, h: int, w: int) -> torch.Tensor:
    """The stream's noise contract: float32 from a CPU generator, shape (n, C, h, w)."""
    gen = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn((n, channels, h, w), generator=gen, dtype=torch.float32)


class StreamPipeline:
    """Stream-batched img2img / txt2img over a :class:`ModelRunner`.

    Call with ``images`` shaped ``(f, 3, H, W)`` in [-1, 1] (or ``None`` for txt2img); returns
    ``(f, 3, H, W)`` in [-1, 1]. When the similarity filter skips a call, the previous output is
    returned again and nothing advances (``last_skipped`` is True).
    """

    def __init__(
        self,
        runner: ModelRunner,
        scheduler: Any,
        settings: StreamSettings,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> None:
        settings.check()
        self.runner = runner
        self.scheduler = scheduler
        self.settings = settings
        self.device = runner.device
        self.dtype = runner.dtype
        self.n = len(settings.t_index_list)
        self.f = settings.frame_buffer_size
        self.cfg_type: str = settings.cfg_type
        self.latent_shape = (
            settings.latent_channels,
            settings.height // settings.vae_scale,
            settings.width // settings.vae_scale,
        )
        self.guidance_scale = float(settings.guidance_scale)
        self.delta = float(settings.delta)
        self.smoothing = float(settings.smoothing)
        self._smooth_prev: torch.Tensor | None = None  # the last output latent (after smoothing)
        self.add_noise = bool(settings.add_noise)
        self.filter = SimilarityFilter(settings.filter_threshold, settings.filter_max_skip, settings.filter_seed)

        rows = self.n * self.f
        c, h, w = self.latent_shape
        self._x_buffer = torch.zeros(((self.n - 1) * self.f, c, h, w), device=self.device, dtype=self.dtype)
        self._stock = torch.zeros((rows, c, h, w), device=self.device, dtype=self.dtype)
        self._primed = False
        self._last_output: torch.Tensor | None = None
        self.last_skipped = False
        self.calls = 0

        self._embed_len: int | None = None
        self._embed_dim: int | None = None
        self._pos = self._neg = None
        self.set_prompt_embeds(prompt_embeds, negative_prompt_embeds)
        self.seed = _check_seed(settings.seed)
        self.set_noise(make_noise(self.seed, self.n, c, h, w))
        self.t_index_list: tuple[int, ...] = tuple(settings.t_index_list)
        self._set_scalars(self.t_index_list)

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

    # ------------------------------------------------------------------ live setters
    def set_prompt_embeds(self, prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor | None = None) -> None:
        """Replace the text conditioning; the negative one is kept when ``None`` is passed after
        the first call (zeros-free: a missing negative at construction means the empty prompt's
        embedding must be given by the caller for ``full``/``initialize`` modes)."""
        pos = self._as_embed(prompt_embeds, "prompt_embeds")
        if negative_prompt_embeds is not None:
            neg = self._as_embed(negative_prompt_embeds, "negative_prompt_embeds")
        elif self._neg is not None:
            neg = self._neg
        elif self.cfg_type in ("full", "initialize"):
            raise ValueError(f"cfg_type {self.cfg_type!r} needs negative_prompt_embeds (the empty prompt's at least)")
        else:
            neg = None
        if neg is not None and neg.shape != pos.shape:
            raise ValueError(f"negative embeddings {tuple(neg.shape)} do not match prompt embeddings {tuple(pos.shape)}")
        self._pos, self._neg = pos, neg
        self._build_text_batch()

    @property
    def prompt_embeds(self) -> torch.Tensor:
        return self._pos

    @property
    def negative_prompt_embeds(self) -> torch.Tensor | None:
        return self._neg

    def _as_embed(self, e: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(e, torch.Tensor):
            raise TypeError(f"{name} should be a tensor, got {type(e).__name__}")
        if e.dim() == 2:
            e = e.unsqueeze(0)
        if e.dim() != 3 or e.shape[0] != 1:
            raise ValueError(f"{name} should be shaped (1, tokens, dim) but is {tuple(e.shape)}")
        if self._embed_len is None:
            self._embed_len, self._embed_dim = int(e.shape[1]), int(e.shape[2])
        elif (e.shape[1], e.shape[2]) != (self._embed_len, self._embed_dim):
            raise RebuildRequired(
                f"{name} shape {tuple(e.shape)} differs from the running (1, {self._embed_len}, {self._embed_dim})"
            )
        if not torch.isfinite(e).all():
            raise ValueError(f"{name} contains NaN or inf")
        return e.to(self.device, self.dtype)

    def _build_text_batch(self) -> None:
        rows = self.n * self.f
        pos_rows = self._pos.expand(rows, -1, -1)
        if self.cfg_type == "full":
            batch = torch.cat([self._neg.expand(rows, -1, -1), pos_rows])
        elif self.cfg_type == "initialize":
            batch = torch.cat([self._neg.expand(self.f, -1, -1), pos_rows])
        else:
            batch = pos_rows
        self._text_batch = batch.contiguous()

    def set_guidance_scale(self, guidance_scale: float) -> None:
        self.guidance_scale = _check_float("guidance_scale", guidance_scale)

    def set_delta(self, delta: float) -> None:
        self.delta = _check_float("delta", delta)

    def set_smoothing(self, smoothing: float) -> None:
        """Temporal smoothing in [0, 0.95]; applies from the next output on, from the real last one."""
        self.smoothing = _check_smoothing(smoothing)

    def set_seed(self, seed: int) -> None:
        """New noise for every stage; the latent buffer is kept (no restart)."""
        seed = _check_seed(seed)
        c, h, w = self.latent_shape
        self.set_noise(make_noise(seed, self.n, c, h, w))
        self.seed = seed

    def noise_for_seed(self, seed: int) -> torch.Tensor:
        c, h, w = self.latent_shape
        return make_noise(_check_seed(seed), self.n, c, h, w)

    def set_noise(self, noise: torch.Tensor) -> None:
        """Set the per-stage noise directly (e.g. a slerp between two seeds' noise while morphing)."""
        expected = (self.n, *self.latent_shape)
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise should be shaped {expected} but is {tuple(noise.shape)}")
        self._noise = noise.to(self.device, self.dtype)
        self._noise_rows = self._noise.repeat_interleave(self.f, dim=0).contiguous()

    @property
    def noise(self) -> torch.Tensor:
        return self._noise

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
        self._smooth_prev = None
        self.filter.reset()

    # ------------------------------------------------------------------ internals
    def _set_scalars(self, t_index_list: Sequence[int]) -> None:
        sc = step_scalars(self.scheduler, t_index_list)
        f = self.f

        def rows(v: torch.Tensor) -> torch.Tensor:
            return v.repeat_interleave(f).view(-1, 1, 1, 1).to(self.device, self.dtype)

        self._t_rows = sc.timesteps.repeat_interleave(f).to(self.device)
        self._alpha = rows(sc.alpha)
        self._beta = rows(sc.beta)
        self._c_skip = rows(sc.c_skip)
        self._c_out = rows(sc.c_out)
        # ratio a_{i+1} / b_{i+1} for the stock-noise carry (rows of stages 1..n-1)
        self._carry = (rows(sc.alpha) / rows(sc.beta))[f:]
        if self.cfg_type == "full":
            self._t_unet = torch.cat([self._t_rows, self._t_rows])
        elif self.cfg_type == "initialize":
            self._t_unet = torch.cat([self._t_rows[:f], self._t_rows])
        else:
            self._t_unet = self._t_rows
        self._t_unet = self._t_unet.contiguous()

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        expected = (self.f, 3, self.settings.height, self.settings.width)
        if not isinstance(images, torch.Tensor) or tuple(images.shape) != expected:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images should be shaped {expected} but are {got}")
        return images.to(self.device, self.dtype)

    def _step(self, x0_new: torch.Tensor) -> torch.Tensor:
        """One stream call given the new stage-0 latents; returns the last stage's x0 estimates."""
        f, n = self.f, self.n
        x = torch.cat([x0_new, self._x_buffer]) if n > 1 else x0_new
        uses_stock = self.cfg_type in ("self", "initialize")

        if self.cfg_type == "full":
            eps = self.runner.unet(torch.cat([x, x]), self._t_unet, self._text_batch)
            eu, ec = eps.chunk(2)
            e = eu + self.guidance_scale * (ec - eu)
        elif self.cfg_type == "initialize":
            eps = self.runner.unet(torch.cat([x0_new, x]), self._t_unet, self._text_batch)
            self._stock[:f] = eps[:f]
            ec = eps[f:]
            s = self.delta * self._stock
            e = s + self.guidance_scale * (ec - s)
        else:
            ec = self.runner.unet(x, self._t_unet, self._text_batch)
            if self.cfg_type == "self":
                self._stock[:f] = self._noise_rows[:f]
                s = self.delta * self._stock
                e = s + self.guidance_scale * (ec - s)
            else:
                e = ec

        a, b = self._alpha, self._beta
        x0_hat = self._c_out * (x - b * e) / a + self._c_skip * x

        if n > 1:
            nxt = self._alpha[f:] * x0_hat[:-f]
            if self.add_noise:
                nxt = nxt + self._beta[f:] * self._noise_rows[f:]
            self._x_buffer = nxt
            if uses_stock:
                bs = b * self._stock
                delta_x = self._c_out * (bs - b * e) / a + self._c_skip * bs
                carried = self._carry * delta_x[:-f]
                if self.add_noise:
                    carried = carried + self._noise_rows[f:]
                self._stock = torch.cat([self._stock[:f], carried])
        return x0_hat[(n - 1) * f :]

    def _sequential(self, x: torch.Tensor) -> torch.Tensor:
        """All n steps for the new frames now, one U-Net call per step (no buffer, no latency)."""
        f, n = self.f, self.n
        pos = self._pos.expand(f, -1, -1)
        neg = self._neg.expand(f, -1, -1) if self._neg is not None else None
        stock = self._noise_rows[:f]
        x0_hat = x
        for i in range(n):
            rows = slice(i * f, (i + 1) * f)
            a, b = self._alpha[rows], self._beta[rows]
            t = self._t_rows[rows]
            if self.cfg_type == "full" or (self.cfg_type == "initialize" and i == 0):
                eps = self.runner.unet(torch.cat([x, x]), torch.cat([t, t]), torch.cat([neg, pos]))
                eu, ec = eps.chunk(2)
                if self.cfg_type == "initialize":
                    stock = eu
            else:
                ec = self.runner.unet(x, t, pos)
            if self.cfg_type == "full":
                e = eu + self.guidance_scale * (ec - eu)
            elif self.cfg_type in ("self", "initialize"):
                s = self.delta * stock
                e = s + self.guidance_scale * (ec - s)
            else:
                e = ec
            x0_hat = self._c_out[rows] * (x - b * e) / a + self._c_skip[rows] * x
            if i < n - 1:
                nxt_rows = slice((i + 1) * f, (i + 2) * f)
                bs = b * stock
                dx = self._c_out[rows] * (bs - b * e) / a + self._c_skip[rows] * bs
                stock = (self._alpha[nxt_rows] / self._beta[nxt_rows]) * dx
                x = self._alpha[nxt_rows] * x0_hat
                if self.add_noise:
                    stock = stock + self._noise_rows[nxt_rows]
                    x = x + self._beta[nxt_rows] * self._noise_rows[nxt_rows]
        return x0_hat

    def _initial_latents(self, z: torch.Tensor | None) -> torch.Tensor:
        f = self.f
        if z is None:  # txt2img: start from the noise itself
            return self._noise_rows[:f].clone()
        return self._alpha[:f] * z + self._beta[:f] * self._noise_rows[:f]

    # ------------------------------------------------------------------ calls
    @torch.inference_mode()
    def __call__(self, images: torch.Tensor | None = None) -> torch.Tensor:
        self.last_skipped = False
        if images is not None:
            images = self._check_images(images)
            if self._primed and self._last_output is not None and self.filter.should_skip(images):
                self.last_skipped = True
                return self._last_output
            if not self._primed:
                self.filter.reset()
                self.filter.should_skip(images)  # records the reference frame
            z = self.runner.encode(images)
        else:
            z = None
        x0 = self._initial_latents(z)
        if not self.settings.denoising_batch:
            out_latents = self._sequential(x0)
        else:
            if not self._primed:
                # Prime: the first frames pass through every stage before the first output, so
                # the first outputs are their real result. Same static batch as every later call.
                for _ in range(self.n - 1):
                    self._step(x0)
            out_latents = self._step(x0)
        self._primed = True
        self.calls += 1
        out_latents = self._smooth(out_latents)
        out = self.runner.decode(out_latents).clamp(-1.0, 1.0)
        self._last_output = out
        return out

    def _smooth(self, latents: torch.Tensor) -> torch.Tensor:
        """Exponential moving average over output latents, frame by frame (rows of one call in
        order). The previous latent is always kept, so turning smoothing on never blends in a
        stale frame."""
        prev = self._smooth_prev
        if self.smoothing > 0.0:
            rows = []
            for j in range(latents.shape[0]):
                row = latents[j : j + 1]
                prev = row if prev is None else torch.lerp(row, prev, self.smoothing)
                rows.append(prev)
            latents = torch.cat(rows)
        self._smooth_prev = latents[-1:].clone()
        return latents

    def txt2img(self) -> torch.Tensor:
        return self(None)
