"""The LCM schedule the stream runs on, and the strength -> t_index_list mapping.

``t_index_list`` indexes the 50-step LCM timestep list (``timesteps[k] = 999 - 20k`` for SD's
scaled-linear betas). A low first index starts from a noisy latent (free, far from the input); a
high one stays close to the input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used, so checking a config stays fast
    import torch

NUM_INFERENCE_STEPS = 50
MAX_INDEX = NUM_INFERENCE_STEPS - 1


def check_t_index_list(t_index_list: Sequence[int]) -> tuple[int, ...]:
    lst = tuple(int(k) for k in t_index_list)
    if not lst:
        raise ValueError("t_index_list must name at least one step")
    if any(isinstance(k, bool) for k in t_index_list):
        raise ValueError(f"t_index_list must hold integers, got {list(t_index_list)!r}")
    if any(k < 0 or k > MAX_INDEX for k in lst):
        raise ValueError(f"t_index_list entries must be within 0..{MAX_INDEX}, got {list(lst)}")
    if any(b <= a for a, b in zip(lst, lst[1:], strict=False)):
        raise ValueError(f"t_index_list must be strictly increasing, got {list(lst)}")
    return lst


# The strength mapping's range: the last step sits at index 45 (t = 99), where the reference's
# users end their lists ([32, 45], [16, 32, 45], [0, 16, 32, 45]); a last step at 49 (t = 19)
# spends a whole U-Net pass on an almost clean latent.
LAST_INDEX = 45
# Where the later steps go by default: the reference's txt2img list for 4 steps, [0, 16, 32, 45].
TAIL_GRID = (16, 32, 45)


def strength_to_t_index_list(strength: float, n: int) -> tuple[int, ...]:
    """Map img2img ``strength`` in [0, 1] onto ``n`` strictly increasing step indices.

    first = round(45 * (1 - strength)) (half up), capped at 45 - (n - 1) so n distinct steps fit.
    Each later step k (1..n-1) is the larger of its grid point (the last n - 1 points of
    ``..., 16, 32, 45``; steps beyond the grid have none) and the even spacing from first to 45
    (rounded half up). So 2 steps give [first, 45] ([32, 45] at strength 0.29), 4 steps at
    strength 1 give [0, 16, 32, 45] and 3 steps [0, 32, 45]; when first passes a grid point the
    later steps spread evenly above it. Monotonic: a higher strength never raises any index.
    strength 1 -> starts at step 0 (pure noise, txt2img-like); strength 0 -> the steps closest to
    the input. :func:`t_index_list_to_strength` inverts it (round trip, also after rounding the
    strength to 4 decimals).
    """
    if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not math.isfinite(strength):
        raise ValueError(f"strength should be a number in [0, 1] but is {strength!r}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength should be in [0, 1] but is {strength}")
    if not 1 <= n <= LAST_INDEX + 1:
        raise ValueError(f"steps should be in 1..{LAST_INDEX + 1} but is {n}")
    first = min(math.floor(LAST_INDEX * (1.0 - strength) + 0.5), LAST_INDEX - (n - 1))
    if n == 1:
        return (first,)
    span = LAST_INDEX - first
    grid = (None,) * max(0, n - 1 - len(TAIL_GRID)) + TAIL_GRID[len(TAIL_GRID) - min(n - 1, len(TAIL_GRID)) :]
    out = [first]
    for k in range(1, n):
        even = first + math.floor(span * k / (n - 1) + 0.5)
        g = grid[k - 1]
        out.append(even if g is None else max(g, even))
    return tuple(out)


def t_index_list_to_strength(t_index_list: Sequence[int]) -> float:
    """The strength whose mapping starts at ``t_index_list[0]`` (for feedback)."""
    return max(0.0, min(1.0, 1.0 - t_index_list[0] / LAST_INDEX))


@dataclass(frozen=True)
class StepScalars:
    """Per-step constants for one t_index_list, each shaped (n,)."""

    timesteps: torch.Tensor  # long
    alpha: torch.Tensor  # sqrt(alphas_cumprod[t])
    beta: torch.Tensor  # sqrt(1 - alphas_cumprod[t])
    c_skip: torch.Tensor
    c_out: torch.Tensor


def step_scalars(scheduler, t_index_list: Sequence[int]) -> StepScalars:
    """Compute a, b, c_skip, c_out for each step (float64 on the CPU; callers cast)."""
    import torch

    scheduler.set_timesteps(NUM_INFERENCE_STEPS)
    all_t = scheduler.timesteps
    ts = torch.stack([all_t[k] for k in t_index_list]).long().cpu()
    acp = scheduler.alphas_cumprod.to(torch.float64).cpu()
    alpha = acp[ts].sqrt()
    beta = (1.0 - acp[ts]).sqrt()
    cs, co = [], []
    for t in ts.tolist():
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
        cs.append(float(c_skip))
        co.append(float(c_out))
    return StepScalars(
        timesteps=ts,
        alpha=alpha,
        beta=beta,
        c_skip=torch.tensor(cs, dtype=torch.float64),
        c_out=torch.tensor(co, dtype=torch.float64),
    )
