"""Runtime plumbing between the frame I/O backends and the render loop.

Threads and what they own::

    SourceWorker (one per source) -> LatestMailbox -> render thread -> LatestMailbox -> Publisher
          +--> input-preview LatestMailbox (bypass, stall fallback) --------------------> Publisher
    Publisher -> one LatestMailbox + SinkWorker thread per sink

* :mod:`~bridge.runtime.convert` - validate, convert to RGB, resize (pre-processing stage).
* :mod:`~bridge.runtime.mailbox` - bounded latest-wins hand-over between threads.
* :mod:`~bridge.runtime.health` - the input-loss watchdog as a pure state machine.
* :mod:`~bridge.runtime.source_worker` - capture thread: backend calls, pre-processing, watchdog.
* :mod:`~bridge.runtime.publisher` - steady-rate output thread with no-signal cards, the render
  watchdog and bypass from the input side.
* :mod:`~bridge.runtime.sink_worker` - one thread and latest-wins mailbox per sink.
* :mod:`~bridge.runtime.metrics` - counters, fps meters and latency percentiles for telemetry.

This package never touches the model.
"""

from bridge.runtime.convert import Preprocessor, Resizer, scale_output, to_rgb, validate_frame
from bridge.runtime.health import NO_SIGNAL_STATES, SourceHealth, SourceState
from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import LatencyStats, Metrics, RateMeter
from bridge.runtime.packet import FramePacket
from bridge.runtime.publisher import Publisher, TickSchedule
from bridge.runtime.source_worker import SourceWorker

__all__ = [
    "NO_SIGNAL_STATES",
    "FramePacket",
    "LatencyStats",
    "LatestMailbox",
    "Metrics",
    "Preprocessor",
    "Publisher",
    "RateMeter",
    "Resizer",
    "SourceHealth",
    "SourceState",
    "SourceWorker",
    "TickSchedule",
    "scale_output",
    "to_rgb",
    "validate_frame",
]
