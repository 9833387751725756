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
    """

    def __init__(self, threshold: float = 1.0, max_skip: int = 10, seed: int = 0) -> None:
        self.configure(threshold, max_skip)
        self._rng = random.Random(seed)
        self._ref: torch.Tensor | None = None
        self._skips = 0
        self.last_similarity: float | None = None
        self.last_probability = 0.0
        self.total_skipped = 0

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

    def should_skip(self, x: torch.Tensor) -> bool:
        """Decide for input ``x``; when it returns False the caller processes ``x``."""
        if not self.enabled or self._ref is None or self._ref.shape != x.shape:
            self._accept(x)
            return False
        s = float(F.cosine_similarity(x.flatten().float(), self._ref.flatten().float(), dim=0))
        self.last_similarity = s
        p = max(0.0, (s - self.threshold) / (1.0 - self.threshold))
        self.last_probability = p
        if self._skips < self.max_skip and self._rng.random() < p:
            self._skips += 1
            self.total_skipped += 1
            return True
        self._accept(x)
        return False

    def _accept(self, x: torch.Tensor) -> None:
        self._ref = x.detach().clone()
        self._skips = 0
