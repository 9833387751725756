"""The item that travels through the runtime mailboxes."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class FramePacket(NamedTuple):
    """An RGB frame (H x W x 3 uint8, owned by whoever holds the packet) with its capture time
    (``time.monotonic()`` at the source, for end-to-end latency) and the source's sequence number.
    A plain tuple, so ``rgb, t_capture, seq = packet`` works."""

    rgb: np.ndarray
    t_capture: float
    seq: int
