"""Stochastic similarity filter: skip frames that barely changed (saves GPU power on still scenes)."""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F


class SimilarityFilter:
    """Skip probability ``p = max(0, (s - threshold) / (1 - threshold))`` where ``s`` is the cosine
    similarity between the current input and the last input that was processed. After ``max_skip``
    consecutive skips the next frame is processed regardless. ``threshold >= 1`` disables it.
    The draw uses its own seeded RNG, so runs are reproducible.

    **No host synchronisation on a GPU.** Deciding needs the similarity on the host, and reading a
    value the GPU is still computing would make the CPU wait for the whole queue of work. On CUDA
    the similarity is therefore copied to pinned memory without blocking, with an event, and the
    decision for a frame uses the newest similarity whose copy has *already* landed (normally the
    previous frame's, compared with the same reference): a still scene is recognised one frame
    later, and a cut is processed at most one frame late, never more than ``max_skip`` in a row.
    On the CPU (no asynchronous queue) the current frame's similarity is used directly.
    """

    def __init__(self, threshold: float = 1.0, max_skip: int = 10, seed: int = 0) -> None:
        self.configure(threshold, max_skip)
        self._rng = random.Random(seed)
        self._ref: torch.Tensor | None = None
        self._skips = 0
        self.last_similarity: float | None = None
        self.last_probability = 0.0
        self.total_skipped = 0
        # CUDA: (pinned host scalar, event) of the similarity copy in flight, and the next buffer
        self._pending: tuple[torch.Tensor, torch.cuda.Event] | None = None
        self._host: list[torch.Tensor] = []

    def configure(self, threshold: float, max_skip: int | None = None) -> None:
        if not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or threshold < 0:
            raise ValueError(f"filter threshold should be a number >= 0 but is {threshold!r}")
        if max_skip is not None:
            if int(max_skip) != max_skip or max_skip < 0:
                raise ValueError(f"filter max_skip should be an integer >= 0 but is {max_skip!r}")
            self.max_skip = int(max_skip)
        self.threshold = float(threshold)

    @property
    def enabled(self) -> bool:
        return self.threshold < 1.0

    def reset(self) -> None:
        self._ref = None
        self._skips = 0
        self._pending = None

    def should_skip(self, x: torch.Tensor) -> bool:
        """Decide for input ``x``; when it returns False the caller processes ``x``."""
        if not self.enabled or self._ref is None or self._ref.shape != x.shape:
            self._accept(x)
            return False
        sim = F.cosine_similarity(x.flatten().float(), self._ref.flatten().float(), dim=0)
        s = self._read_async(sim) if self._asynchronous(x) else float(sim)
        if s is None:  # nothing has landed yet: process this frame
            self._accept(x)
            return False
        self.last_similarity = s
        p = max(0.0, (s - self.threshold) / (1.0 - self.threshold))
        self.last_probability = p
        if self._skips < self.max_skip and self._rng.random() < p:
            self._skips += 1
            self.total_skipped += 1
            return True
        self._accept(x)
        return False

    @staticmethod
    def _asynchronous(x: torch.Tensor) -> bool:
        """Whether reading a value of ``x``'s device would wait for queued work (CUDA)."""
        return x.device.type == "cuda"

    def _read_async(self, sim: torch.Tensor) -> float | None:
        """Start copying ``sim`` to the host; return the newest similarity already there (or None)."""
        landed = None
        if self._pending is not None and self._pending[1].query():  # query() never blocks
            landed = float(self._pending[0])
            self._host.append(self._pending[0])
            self._pending = None
        if self._pending is None:
            host = self._host.pop() if self._host else self._new_host()
            host.copy_(sim, non_blocking=True)
            self._pending = (host, self._record_event(sim.device))
        return landed

    @staticmethod
    def _new_host() -> torch.Tensor:
        return torch.empty((), dtype=torch.float32, pin_memory=True)

    @staticmethod
    def _record_event(device: torch.device) -> torch.cuda.Event:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        return event

    def _accept(self, x: torch.Tensor) -> None:
        if self._ref is not None and self._ref.shape == x.shape and self._ref.dtype == x.dtype \
                and self._ref.device == x.device:
            self._ref.copy_(x)  # a static reference buffer: no allocation per processed frame
        else:
            self._ref = x.detach().clone()
        self._skips = 0
