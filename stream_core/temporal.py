"""Temporal consistency across frames: cached attention (a feature bank) and feature injection.

Each U-Net self-attention layer (diffusers' ``attn1`` in a transformer block) gets a
:class:`CachedSelfAttention` processor. A :class:`TemporalBank` keeps, per layer and per *stream
row* (stage ``i`` x frame lane ``j``: row ``i*f + j``, the pipeline's layout), a ring of the keys,
values and attention outputs that row computed on its last ``max_frames`` refreshed frames:

* **cached attention**: the current frame's queries attend to its own keys/values concatenated
  with the bank of its own row (what that stage saw on earlier frames), ``K = [K_now, K_bank]``;
* **feature injection**: each attention output feature is pulled towards its most similar cached
  output feature (cosine similarity over every token of the valid cached frames), by ``injection``
  in [0, 1]: ``out + s * (nearest - out)``.

Static shapes: the ring has the *built* size (``max_frames``, 1..4) from the start and is filled
with the first frame the stream sees (after every reset). Which slots are read (``frames``, the
newest first), whether the cache is read at all (``cache``), how often the ring is written
(``interval``) and the injection strength are device tensors updated in place, so toggling any of
them changes no shape and needs no recompile, re-capture or export.

Two execution styles of the same maths:

* eager (``static=False``, the default): work that cannot matter is skipped in Python (the cache
  off: the plain attention; injection 0: no nearest-neighbour search). With the cache off the
  layer runs exactly the ops of diffusers' ``AttnProcessor2_0``, so the output is bit-identical
  to a U-Net without the bank;
* static (``static=True``, for captured graphs, torch.compile and export): no Python branch
  depends on a live setting; off means every bank slot is masked out of the softmax (weight
  exactly 0) and injection 0 blends by exactly 0, equal to the eager result to float rounding.

The bank is read inside the U-Net call and written after it (:meth:`TemporalBank.end_call`), from
the tensors the processors recorded; an exporter can therefore take the bank as graph inputs and
the recorded tensors as outputs (:class:`TemporalUNetGraph`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

MAX_FRAMES = 4
MAX_INTERVAL = 64
MAX_LATENT_FEEDBACK = 0.9
SELF_ATTENTION_SUFFIX = "attn1.processor"


def check_max_frames(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_FRAMES:
        raise ValueError(f"temporal max_frames should be an integer in 0..{MAX_FRAMES} but is {v!r}")
    return v


def _check_unit(name: str, v: Any, hi: float = 1.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= hi:
        raise ValueError(f"{name} should be a number in [0, {hi:g}] but is {v!r}")
    return float(v)


def check_latent_feedback(v: Any) -> float:
    return _check_unit("latent_feedback", v, MAX_LATENT_FEEDBACK)


def check_injection(v: Any) -> float:
    return _check_unit("temporal injection", v)


def check_interval(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_INTERVAL:
        raise ValueError(f"temporal interval should be an integer in 1..{MAX_INTERVAL} but is {v!r}")
    return v


def self_attention_layers(unet: Any) -> list[tuple[str, Any]]:
    """``(processor name, Attention module)`` of every self-attention layer of a diffusers U-Net."""
    out = []
    for name, module in unet.named_modules():
        if name.endswith("attn1") and hasattr(module, "set_processor") and not getattr(module, "is_cross_attention", False):
            out.append((name + ".processor", module))
    return out


def _spatial_sizes(unet: Any, h: int, w: int) -> dict[str, tuple[int, int]]:
    """Latent grid of each block of a UNet2DConditionModel: down block ``i`` works at the size
    after ``i`` downsamplers (stride-2 convolutions round up), the mid block at the deepest one,
    up block ``i`` mirrors down block ``len - 1 - i``."""
    sizes = []
    for block in unet.down_blocks:
        sizes.append((h, w))
        if getattr(block, "downsamplers", None):
            h, w = (h + 1) // 2, (w + 1) // 2
    out = {f"down_blocks.{i}.": s for i, s in enumerate(sizes)}
    out["mid_block."] = sizes[-1] if not getattr(unet.down_blocks[-1], "downsamplers", None) else (h, w)
    for i in range(len(unet.up_blocks)):
        out[f"up_blocks.{i}."] = sizes[len(sizes) - 1 - i]
    return out


class TemporalBank:
    """The per-layer, per-stream-row ring of cached keys/values/outputs and its live settings.

    ``rows``: stream rows (``n * f``); ``latent_hw``: the latent grid the U-Net runs at. Tensors are
    made here, on ``device`` in ``dtype`` (settings as 0-dim device tensors), and only ever updated
    in place. The pipeline brackets each frame with :meth:`begin_frame` / :meth:`end_frame` and
    each U-Net call with :meth:`begin_call` / :meth:`end_call`.
    """

    def __init__(
        self,
        unet: Any,
        rows: int,
        latent_hw: tuple[int, int],
        max_frames: int,
        device: torch.device | str,
        dtype: torch.dtype,
        *,
        cache: bool = True,
        frames: int | None = None,
        interval: int = 1,
        injection: float = 0.0,
        static: bool = False,
    ) -> None:
        m = check_max_frames(max_frames)
        if m < 1:
            raise ValueError("a temporal bank needs max_frames >= 1")
        self.max_frames = m
        self.rows = int(rows)
        self.device = torch.device(device)
        self.dtype = dtype
        self.static = bool(static)
        layers = self_attention_layers(unet)
        if not layers:
            raise ValueError("the U-Net has no self-attention layers to cache")
        sizes = _spatial_sizes(unet, *latent_hw)
        dev, dt = self.device, dtype
        self.names: list[str] = []
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        processors = {}
        for idx, (name, attn) in enumerate(layers):
            block = next((p for p in sizes if name.startswith(p)), None)
            if block is None:
                raise ValueError(f"cannot place self-attention layer {name} in the U-Net's blocks")
            h, w = sizes[block]
            _check_layer(name, attn)
            inner = attn.to_k.out_features
            out_dim = attn.to_out[0].out_features
            for store, c in ((self.keys, inner), (self.values, inner), (self.outputs, out_dim)):
                store.append(torch.zeros((self.rows, m, h * w, c), device=dev, dtype=dt))
            self.names.append(name)
            processors[name] = CachedSelfAttention(self, idx)
        # live settings (device tensors, written in place) and the ring's state
        self._ptr = torch.zeros((), device=dev, dtype=torch.long)  # next slot to write
        self._count = torch.zeros((), device=dev, dtype=torch.long)  # frames since the fill
        self._frames = torch.zeros((), device=dev, dtype=torch.long)
        self._interval = torch.ones((), device=dev, dtype=torch.long)
        self._enabled = torch.zeros((), device=dev, dtype=torch.bool)
        self._strength = torch.zeros((), device=dev, dtype=dt)
        self._inj_scale = torch.zeros((), device=dev, dtype=dt)  # the strength, 0 while filling
        self._slots = torch.arange(m, device=dev, dtype=torch.long)
        self._write = torch.zeros((), device=dev, dtype=torch.bool)  # this frame refreshes the ring
        self._attn_bias = torch.zeros((m,), device=dev, dtype=dt)  # 0 or -inf per slot
        self._inj_bias = torch.zeros((m,), device=dev, dtype=dt)
        self._neg_inf = torch.full((), float("-inf"), device=dev, dtype=dt)
        self._zero = torch.zeros((), device=dev, dtype=dt)
        self.cache = False
        self.frames = 1
        self.interval = 1
        self.injection = 0.0
        self.set_cache(cache)
        self.set_frames(m if frames is None else frames)
        self.set_interval(interval)
        self.set_injection(injection)
        self._fill = True  # the next frame fills every slot (start, reset)
        self._filling = False
        self._call: tuple[int, int, int] | None = None  # (first row, rows, uncond rows) of the U-Net call
        self.fresh: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = [None] * len(self.names)
        # the bank may be built over a U-Net that already runs: keep its previous processors
        self._previous = {name: attn.processor for name, attn in layers}
        unet.set_attn_processor({**unet.attn_processors, **processors})
        self.unet = unet

    # ------------------------------------------------------------------ live settings
    def set_cache(self, on: bool) -> None:
        if not isinstance(on, (bool, int)) or on not in (0, 1):
            raise ValueError(f"temporal cache should be on (1) or off (0) but is {on!r}")
        self.cache = bool(on)
        self._enabled.fill_(self.cache)

    def set_frames(self, frames: int) -> None:
        if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= self.max_frames:
            raise ValueError(
                f"temporal frames should be an integer in 1..{self.max_frames} (the bank is built for "
                f"{self.max_frames}; more needs temporal.max_frames and a restart) but is {frames!r}"
            )
        self.frames = frames
        self._frames.fill_(frames)

    def set_interval(self, interval: int) -> None:
        self.interval = check_interval(interval)
        self._interval.fill_(self.interval)

    def set_injection(self, strength: float) -> None:
        self.injection = check_injection(strength)
        self._strength.fill_(self.injection)

    def reset(self) -> None:
        """Forget the cached frames: the next frame fills the ring again."""
        self._fill = True

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the bank's state, by a stable name (graph capture snapshots them)."""
        out = {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        for store in ("keys", "values", "outputs"):
            for i, t in enumerate(getattr(self, store)):
                out[f"{store}.{i}"] = t
        return out

    def uninstall(self) -> None:
        """Give the layers back the processors they had before the bank was built."""
        self.unet.set_attn_processor({**self.unet.attn_processors, **self._previous})

    # ------------------------------------------------------------------ per frame / per call
    def begin_frame(self, fill: bool = False) -> None:
        """Work out which slots this frame reads and whether it writes (device ops only). A
        filling frame (the first after start or reset) reads nothing and fills every slot."""
        self._filling = self._fill or fill
        m = self.max_frames
        if self._filling:
            self._attn_bias.fill_(float("-inf"))
            self._inj_bias.fill_(float("-inf"))
            self._write.fill_(True)
            self._inj_scale.zero_()
            return
        self._inj_scale.copy_(self._strength)
        age = torch.remainder(self._ptr - 1 - self._slots, m)  # 0: the newest slot
        recent = age < self._frames
        torch.where(recent, self._zero, self._neg_inf, out=self._inj_bias)
        torch.where(recent & self._enabled, self._zero, self._neg_inf, out=self._attn_bias)
        torch.eq(torch.remainder(self._count, self._interval), 0, out=self._write)

    def begin_call(self, first_row: int, rows: int, uncond: int) -> None:
        """The next U-Net call holds stream rows ``first_row .. first_row + rows``, preceded by
        ``uncond`` negative-text rows for the first ``uncond`` of them (full/initialize guidance)."""
        self._call = (int(first_row), int(rows), int(uncond))

    def abandon_call(self) -> None:
        """End a U-Net call without writing the ring (a warm-up / capture outside the stream)."""
        self._call = None
        if not self.static:
            self.fresh = [None] * len(self.names)

    def end_call(self) -> None:
        """Write what the processors recorded for the call's stream rows into the ring."""
        call, self._call = self._call, None
        if call is None:
            return
        r0, n, _ = call
        slot = self._ptr.view(1)
        for i, rec in enumerate(self.fresh):
            if rec is None:
                raise RuntimeError(f"self-attention layer {self.names[i]} did not run in the U-Net call")
            for store, new in zip((self.keys, self.values, self.outputs), rec, strict=True):
                ring = store[i][r0 : r0 + n]
                new = new[-n:].unsqueeze(1)
                if self._filling:
                    ring.copy_(new.expand_as(ring))
                else:
                    cur = ring.index_select(1, slot)
                    ring.index_copy_(1, slot, torch.where(self._write, new, cur))
            if not self.static:
                # static (captured or compiled U-Net calls): a CUDA graph's replay does not run the
                # processors, so the tensors they recorded at capture are where each replay writes
                self.fresh[i] = None

    def end_frame(self) -> None:
        m = self.max_frames
        if self._filling:
            self._ptr.fill_(1 % m)
            self._count.fill_(1)
            self._fill = self._filling = False
            return
        nxt = torch.remainder(self._ptr + 1, m)
        torch.where(self._write, nxt, self._ptr, out=self._ptr)
        self._count.add_(1)

    # ------------------------------------------------------------------ read by the processors
    @property
    def active(self) -> bool:
        return self._call is not None

    @property
    def current_call(self) -> tuple[int, int, int] | None:
        """``(first row, rows, uncond rows)`` of the U-Net call in progress, None outside one."""
        return self._call

    def adopt(self, attn_bias: torch.Tensor, inj_bias: torch.Tensor, strength: torch.Tensor,
              keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> None:
        """Make the given tensors the bank's ring and read settings (an exported graph's static
        input buffers, so that a graph call copies none of them): each must have the shape, dtype
        and device of the tensor it replaces, whose contents are copied into it once."""
        n = len(self.names)
        if not len(keys) == len(values) == len(outputs) == n:
            raise ValueError(f"the temporal bank has {n} layers but {len(keys)}/{len(values)}/{len(outputs)} "
                             "key/value/output buffers were given")
        pairs = [("attn_bias", self._attn_bias, attn_bias), ("inj_bias", self._inj_bias, inj_bias),
                 ("strength", self._inj_scale, strength)]
        for kind, store, given in (("keys", self.keys, keys), ("values", self.values, values),
                                   ("outputs", self.outputs, outputs)):
            pairs += [(f"{kind}[{i}] ({self.names[i]})", store[i], given[i]) for i in range(n)]
        for what, mine, theirs in pairs:
            if (tuple(mine.shape), mine.dtype, mine.device) != (tuple(theirs.shape), theirs.dtype, theirs.device):
                raise ValueError(f"temporal bank {what}: the graph's buffer is {tuple(theirs.shape)} {theirs.dtype} "
                                 f"on {theirs.device}, the bank's {tuple(mine.shape)} {mine.dtype} on {mine.device}")
        for _, mine, theirs in pairs:
            if theirs.data_ptr() != mine.data_ptr():
                theirs.copy_(mine)
        self._attn_bias, self._inj_bias, self._inj_scale = attn_bias, inj_bias, strength
        self.keys, self.values, self.outputs = list(keys), list(values), list(outputs)

    def _rows(self, store: list[torch.Tensor], i: int, batch: int, tokens: int | None = None) -> torch.Tensor:
        """The ring of layer ``i`` for every row of the U-Net batch: (batch, max_frames * T, C)."""
        r0, n, uncond = self._call
        ring = store[i][r0 : r0 + n]
        if uncond:
            ring = torch.cat([ring[:uncond], ring])
        if ring.shape[0] != batch:
            raise RuntimeError(f"U-Net batch {batch} does not match the temporal bank's call ({uncond} + {n} rows)")
        if tokens is not None and ring.shape[2] != tokens:
            raise RuntimeError(f"self-attention layer {self.names[i]} runs {tokens} tokens but its bank was built "
                               f"for {ring.shape[2]} (a different latent size needs a new pipeline)")
        return ring.flatten(1, 2)

    def bank_kv(self, i: int, batch: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._rows(self.keys, i, batch, tokens), self._rows(self.values, i, batch, tokens)

    def attn_bias(self, tokens: int, bank_tokens: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask (1, 1, 1, tokens + max_frames * bank_tokens): 0 for the current frame's
        keys and the slots read, -inf for the others."""
        bias = self._attn_bias.to(dtype).repeat_interleave(bank_tokens)
        return torch.cat([bias.new_zeros(tokens), bias]).view(1, 1, 1, -1)

    def inject(self, i: int, out: torch.Tensor) -> torch.Tensor:
        """``out + s * (nearest cached output feature (cosine) - out)``, per token."""
        cached = self._rows(self.outputs, i, out.shape[0], out.shape[1])
        t = self.outputs[i].shape[2]
        sim = F.normalize(out, dim=-1) @ F.normalize(cached, dim=-1).transpose(1, 2)
        sim = sim + self._inj_bias.to(sim.dtype).repeat_interleave(t)
        idx = sim.argmax(dim=-1, keepdim=True).expand(-1, -1, cached.shape[-1])
        nearest = torch.gather(cached, 1, idx)
        return out + self._inj_scale.to(out.dtype) * (nearest - out)


def _check_layer(name: str, attn: Any) -> None:
    """The processor handles the plain token self-attention of SD's transformer blocks."""
    odd = [what for what, bad in (
        ("group_norm", getattr(attn, "group_norm", None) is not None),
        ("spatial_norm", getattr(attn, "spatial_norm", None) is not None),
        ("residual_connection", bool(getattr(attn, "residual_connection", False))),
    ) if bad]
    if odd:
        raise ValueError(f"self-attention layer {name} uses {', '.join(odd)}, which the temporal bank does not handle")


class CachedSelfAttention:
    """Attention processor of one self-attention layer: cached attention + feature injection.

    Outside a bank call (e.g. a warm-up call of the U-Net) it is the plain attention."""

    def __init__(self, bank: TemporalBank, index: int) -> None:
        self.bank = bank
        self.index = index

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError("the temporal bank's processor handles token self-attention only")
        bank, i = self.bank, self.index
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        active = bank.active
        k_all, v_all, mask = key, value, None
        if active and (bank.static or bank.cache):
            kb, vb = bank.bank_kv(i, batch, key.shape[1])
            k_all = torch.cat([key, kb], dim=1)
            v_all = torch.cat([value, vb], dim=1)
            mask = bank.attn_bias(key.shape[1], bank.keys[i].shape[2], query.dtype)
        q = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        k = k_all.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        v = v_all.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        out = out.to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        out = out / attn.rescale_output_factor
        if not active:
            return out
        bank.fresh[i] = (key, value, out)  # the raw output is cached, before injection
        if bank.static or bank.injection > 0:
            out = bank.inject(i, out)
        return out


class TemporalUNetGraph(torch.nn.Module):
    """The U-Net with the bank as explicit graph inputs and the recorded tensors as outputs, for
    export: ``(latents, timesteps, text_embeds, attn_bias, inj_bias, strength, *keys, *values,
    *outputs) -> (eps, *fresh keys, *fresh values, *fresh outputs)`` for one stream call of all
    ``rows`` rows (``uncond`` negative-text rows ahead). The bank must be static."""

    def __init__(self, unet: Any, bank: TemporalBank, uncond: int = 0, residuals: int = 0) -> None:
        super().__init__()
        if not bank.static:
            raise ValueError("export needs the temporal bank in static mode")
        self.unet = unet
        self.bank = bank
        self.uncond = uncond
        #: with ``residuals`` > 0 the inputs after ``strength`` start with that many ControlNet
        #: residuals (down blocks, then the mid block) added to the U-Net's skip connections
        self.residuals = int(residuals)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                attn_bias: torch.Tensor, inj_bias: torch.Tensor, strength: torch.Tensor,
                *bank: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b = self.bank
        n = len(b.names)
        res, bank = bank[: self.residuals], bank[self.residuals :]
        saved = (b.keys, b.values, b.outputs, b._attn_bias, b._inj_bias, b._inj_scale)
        b.keys, b.values, b.outputs = list(bank[:n]), list(bank[n : 2 * n]), list(bank[2 * n :])
        b._attn_bias, b._inj_bias, b._inj_scale = attn_bias, inj_bias, strength
        b.begin_call(0, b.rows, self.uncond)
        try:
            if res:
                from stream_core.runner import unet_with_residuals

                eps = unet_with_residuals(self.unet, latents, timesteps, text_embeds, res)
            else:
                eps = self.unet(latents, timesteps, encoder_hidden_states=text_embeds, return_dict=False)[0]
            fresh = [rec for rec in b.fresh if rec is not None]
            if len(fresh) != n:
                raise RuntimeError("not every self-attention layer ran")
        finally:
            b._call = None
            b.keys, b.values, b.outputs, b._attn_bias, b._inj_bias, b._inj_scale = saved
            b.fresh = [None] * n
        return (eps, *[r[0] for r in fresh], *[r[1] for r in fresh], *[r[2] for r in fresh])

    def example_bank(self) -> list[torch.Tensor]:
        b = self.bank
        return [*b.keys, *b.values, *b.outputs]


def skeleton_unet(unet: Any) -> Any:
    """A weightless copy of a diffusers U-Net's module tree (on the ``meta`` device): what a bank
    needs to lay out its ring when the U-Net itself runs as an exported graph."""
    with torch.device("meta"):
        return type(unet).from_config(unet.config)


def bank_rows(t_index_list: Sequence[int], frame_buffer_size: int) -> int:
    """Stream rows the bank keeps a ring for: steps x frames per call."""
    return len(t_index_list) * frame_buffer_size
