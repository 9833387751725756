"""The pipeline's noise and text conditioning: per-seed noise, validated embeddings, blends, morphs.

Everything here makes its tensors on one device and dtype given at construction (the pipeline's),
so a blend or a morph can never mix a GPU tensor with a CPU one. Used by
:class:`stream_core.pipeline.StreamPipeline`; callers outside ``stream_core`` speak in seeds, mixes,
embedding handles (whatever the prompt encoder returned, passed back unchanged) and morph progress.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from stream_core.blend import Slerp, slerp_weights


class SeedNoise:
    """Per-seed stream noise, drawn once on the CPU generator (the reproducibility contract of
    ``make``), moved to ``device``/``dtype`` once at creation; the device copy is what is cached
    (the ``capacity`` most recently used seeds).

    The seed crossfader's slerp is made from host numbers: each pair's norms and dot product come
    from the two CPU draws (kept beside the device copies; the ``capacity`` most recent pairs
    remembered), so a mix is ``alpha * a + beta * b`` on the device
    (:func:`stream_core.blend.slerp_weights`): two element-wise ops, and no device value is ever
    read on the host."""

    def __init__(
        self,
        make: Callable[[int], torch.Tensor],
        device: torch.device,
        dtype: torch.dtype,
        capacity: int = 4,
    ) -> None:
        self._make = make
        self.device = torch.device(device)
        self.dtype = dtype
        self.capacity = max(2, int(capacity))  # a mix needs both of its seeds at once
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        # host side, on purpose: each seed's CPU draw (float32, flat); each pair's norms and dot
        self._host: dict[int, torch.Tensor] = {}
        self._pairs: OrderedDict[tuple[int, int], tuple[float, float, float]] = OrderedDict()
        self.draws = 0  # how many times noise was drawn (a cache miss)

    def get(self, seed: int) -> torch.Tensor:
        noise = self._cache.get(seed)
        if noise is None:
            cpu = self._make(seed)
            noise = upload(cpu, self.device, self.dtype)
            self.draws += 1
            if len(self._cache) >= self.capacity:
                old, _ = self._cache.popitem(last=False)
                self._host.pop(old, None)
            self._cache[seed] = noise
            self._host[seed] = cpu.detach().to("cpu", torch.float32).reshape(-1)
        else:
            self._cache.move_to_end(seed)
        return noise

    def mix(self, seed: int, seed_b: int, mix: float) -> torch.Tensor:
        """Seed's noise, seed B's, or their slerp at ``mix`` (kept unit-variance)."""
        mix = check_mix("seed_mix", mix)
        if mix <= 0.0 or seed == seed_b:
            return self.get(seed)
        if mix >= 1.0:
            return self.get(seed_b)
        a, b = self.get(seed), self.get(seed_b)
        key = (seed, seed_b)
        pair = self._pairs.get(key)
        if pair is None:
            ha, hb = self._host[seed], self._host[seed_b]
            aa, bb, ab = (float(torch.dot(x, y)) for x, y in ((ha, ha), (hb, hb), (ha, hb)))
            pair = self._pairs[key] = (math.sqrt(aa), math.sqrt(bb), ab)
            while len(self._pairs) > self.capacity:
                self._pairs.popitem(last=False)
        else:
            self._pairs.move_to_end(key)
        alpha, beta = slerp_weights(*pair, mix)
        return torch.add(a * alpha, b, alpha=beta)


def upload(cpu: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor on ``device`` in ``dtype``. To a CUDA device through pinned memory with a
    non-blocking copy, ordered on the current stream: a copy from ordinary (pageable) memory makes
    the host wait until the GPU has finished everything queued before it, so a seed fader moving
    every frame would stall the render thread and undo its one-frame lead on the GPU. The dtype is
    converted on the host first: a copy that also converts makes a pageable temporary, which would
    bring the wait back."""
    if device.type == "cuda":
        return cpu.to(dtype=dtype).pin_memory().to(device, non_blocking=True)
    return cpu.to(device, dtype)


def check_mix(name: str, mix: object) -> float:
    if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not math.isfinite(mix):
        raise ValueError(f"{name} should be a number in [0, 1] but is {mix!r}")
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"{name} should be in [0, 1] but is {mix!r}")
    return float(mix)


class EmbedStore:
    """Validated device copies of text embeddings, keyed by the identity of the tensor handed in.

    The prompt cache hands the same tensor object for the same text, so a text's embedding is
    checked (shape, finiteness: one host synchronisation) and moved once, however often it is
    used afterwards. The store holds the originals it has seen (at most ``capacity``), so an id
    is never reused while it is a key.
    """

    def __init__(self, check: Callable[[torch.Tensor, str], torch.Tensor], capacity: int = 16) -> None:
        self._check = check
        self.capacity = max(1, int(capacity))
        self._cache: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.checks = 0

    def get(self, e: torch.Tensor, name: str) -> torch.Tensor:
        hit = self._cache.get(id(e))
        if hit is not None and hit[0] is e:
            self._cache.move_to_end(id(e))
            return hit[1]
        dev = self._check(e, name)
        self.checks += 1
        if len(self._cache) >= self.capacity:
            self._cache.popitem(last=False)
        self._cache[id(e)] = (e, dev)
        return dev

    def clear(self) -> None:
        self._cache.clear()


@dataclass
class Morph:
    """Start and end of a transition, all on the pipeline's device and dtype. A part whose end is
    ``None`` does not move (it was not asked for, or was dropped because the user took it over)."""

    noise_from: torch.Tensor
    noise_to: torch.Tensor | None
    pos_from: torch.Tensor
    pos_to: torch.Tensor | None
    neg_from: torch.Tensor | None
    neg_to: torch.Tensor | None
    _pairs: dict[str, Slerp] = field(default_factory=dict, repr=False, compare=False)

    def noise_at(self, u: float) -> torch.Tensor | None:
        if self.noise_to is None:
            return None
        return self._pair("noise", self.noise_from, self.noise_to).at(u)

    def embeds_at(self, u: float) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        if self.pos_to is None:
            return None
        neg = None
        if self.neg_from is not None and self.neg_to is not None:
            neg = self._pair("neg", self.neg_from, self.neg_to).at(u)
        return self._pair("pos", self.pos_from, self.pos_to).at(u), neg

    def _pair(self, part: str, a: torch.Tensor, b: torch.Tensor) -> Slerp:
        """The prepared slerp of one part, made on its first frame (each frame then only blends)."""
        pair = self._pairs.get(part)
        if pair is None or pair.a is not a or pair.b is not b:
            pair = self._pairs[part] = Slerp(a, b)
        return pair
