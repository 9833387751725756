"""The bounded control inbox between the OSC receiver (and other producers) and the render loop.

Two lanes, one order:

* **Parameter changes coalesce.** :class:`SetParams` values go into an *open* dict, one slot per
  parameter: a later value replaces an earlier one (latest wins), so a fader that sends 2,000
  values a second costs the render loop one assignment per parameter per frame, not 2,000.
* **Discrete commands queue.** A batch holding anything else (recall, next/prev, save, state dump)
  is queued *whole*, with the parameter changes that arrived before it ("sealed" in front of it),
  in a queue of at most ``max_entries`` entries. When it is full the batch is refused: the first
  refusal of a burst is reported through ``on_refused`` (one ``/sd/error``), the rest are counted.

Order is kept across the two lanes. :meth:`ControlInbox.drain` hands the render loop, in arrival
order, ``[SetParams(sealed_1), *entry_1, SetParams(sealed_2), *entry_2, ...]`` for at most
``max_per_tick`` queued entries, then ``SetParams(open)`` only once the queue is empty (a value
that arrived after a queued recall must not be overtaken by it). Each ``put`` runs under one lock
and each ``drain`` swaps what it takes under the same lock, so an all-or-nothing bundle is never
split between two frames: either all of it is taken or none of it (a value it set may have been
replaced by a later one, which is what "latest wins" means).

Pure: no sockets, no threads of its own, no ``bridge`` runtime imports; thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.control.surface import (
    Command,
    DumpState,
    RecallPreset,
    SavePreset,
    SetParams,
    StepPreset,
    TempoTap,
)

log = logging.getLogger("bridge.control.inbox")

DEFAULT_MAX_ENTRIES = 64
DEFAULT_MAX_PER_TICK = 8
#: A packet may carry at most this many discrete commands (a bundle of 1,000 recalls is refused).
MAX_COMMANDS_PER_BATCH = 16


@dataclass(frozen=True)
class Refusal:
    """Why :meth:`ControlInbox.put` refused a batch: the address to report and a reason."""

    address: str
    reason: str


def _address_of(cmd: Command) -> str:
    if isinstance(cmd, RecallPreset):
        return "/sd/preset"
    if isinstance(cmd, StepPreset):
        return "/sd/preset/next" if cmd.delta > 0 else "/sd/preset/prev"
    if isinstance(cmd, SavePreset):
        return "/sd/preset/save"
    if isinstance(cmd, DumpState):
        return "/sd/state"
    if isinstance(cmd, TempoTap):
        return "/sd/tempo/downbeat" if cmd.downbeat else "/sd/tempo/tap"
    return "/sd"


class ControlInbox:
    """Coalescing, bounded, order-keeping inbox (see the module docstring).

    ``on_refused(address, reason)`` is called (on the putting thread, outside the lock) for a
    batch with too many commands, and once per burst of queue-full refusals: a burst ends when a
    discrete batch is accepted again.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_per_tick: int = DEFAULT_MAX_PER_TICK,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        if max_entries < 1 or max_per_tick < 1:
            raise ValueError("max_entries and max_per_tick must be >= 1")
        self.max_entries = max_entries
        self.max_per_tick = max_per_tick
        self.on_refused = on_refused
        self._lock = threading.Lock()
        self._open: dict[str, Any] = {}
        self._queue: deque[tuple[dict[str, Any], list[Command]]] = deque()
        self._in_burst = False
        self._burst_refused = 0
        self._counts = dict.fromkeys(
            ("batches", "params", "coalesced", "queued", "refused", "overflow_bursts", "drained"), 0
        )

    # ---------------------------------------------------------------- producers (any thread)
    def put(self, batch: list[Command]) -> Refusal | None:
        """Add one validated batch. Returns None when accepted, else the :class:`Refusal` (the
        batch changed nothing). Never blocks beyond a short lock."""
        discrete = [c for c in batch if not isinstance(c, SetParams)]
        if len(discrete) > MAX_COMMANDS_PER_BATCH:
            with self._lock:
                self._counts["refused"] += 1
            too_many = Refusal(
                _address_of(discrete[0]),
                f"{len(discrete)} commands in one packet; at most {MAX_COMMANDS_PER_BATCH} (parameter "
                "changes are not limited)",
            )
            if self.on_refused is not None:
                self.on_refused(too_many.address, too_many.reason)
            return too_many
        report: Refusal | None = None
        with self._lock:
            self._counts["batches"] += 1
            if not discrete:
                for cmd in batch:
                    assert isinstance(cmd, SetParams)
                    for name, value in cmd.values.items():
                        if name in self._open:
                            self._counts["coalesced"] += 1
                            del self._open[name]  # re-insert: dict order follows the latest arrival
                        self._open[name] = value
                        self._counts["params"] += 1
                return None
            if len(self._queue) >= self.max_entries:
                self._counts["refused"] += 1
                refusal = Refusal(
                    _address_of(discrete[0]),
                    f"control queue full ({self.max_entries} commands waiting); command refused",
                )
                if not self._in_burst:
                    self._in_burst = True
                    self._counts["overflow_bursts"] += 1
                    report = refusal
                self._burst_refused += 1
                result: Refusal | None = refusal
                ended = 0
            else:
                ended = self._end_burst()
                self._queue.append((self._open, list(batch)))
                self._open = {}
                self._counts["queued"] += 1
                result = None
        if ended:
            self._log_burst(ended)
        if report is not None and self.on_refused is not None:
            self.on_refused(report.address, report.reason)
        return result

    def _end_burst(self) -> int:
        refused, self._burst_refused = self._burst_refused, 0
        self._in_burst = False
        return refused

    def _log_burst(self, refused: int) -> None:
        log.warning("control queue was full: %d command(s) refused (each burst got one /sd/error)", refused)

    def flush(self) -> int:
        """Log the refusals of a burst still open (at stop, say); returns how many it covered."""
        with self._lock:
            ended = self._end_burst()
        if ended:
            self._log_burst(ended)
        return ended

    # ---------------------------------------------------------------- the render loop
    def drain(self) -> list[Command]:
        """What to apply this tick, in arrival order (see the module docstring). Cost: at most
        ``max_per_tick`` queued batches plus one entry per parameter."""
        out: list[Command] = []
        with self._lock:
            for _ in range(min(self.max_per_tick, len(self._queue))):
                sealed, batch = self._queue.popleft()
                if sealed:
                    out.append(SetParams(sealed))
                out.extend(batch)
                self._counts["drained"] += 1
            if not self._queue and self._open:
                out.append(SetParams(self._open))
                self._open = {}
        return out

    def drain_all(self) -> list[Command]:
        """Everything still waiting, in order, whatever the per-tick cap (used on stop)."""
        self.flush()
        out: list[Command] = []
        while True:
            part = self.drain()
            if not part:
                return out
            out.extend(part)

    # ---------------------------------------------------------------- introspection
    def pending(self) -> tuple[int, int]:
        """(queued discrete batches, coalesced parameters waiting in the open slot)."""
        with self._lock:
            return len(self._queue), len(self._open)

    def stats(self) -> dict[str, int]:
        """``batches`` put, ``params`` values received, ``coalesced`` (replaced before applied),
        ``queued`` / ``refused`` discrete batches, ``overflow_bursts``, ``drained`` batches."""
        with self._lock:
            return dict(self._counts)
