"""The feedback hand-over is bounded and the log of rejected messages cannot be flooded."""

from __future__ import annotations

import logging
import threading

from bridge.control.feedback import FeedbackQueue
from bridge.control.ratelog import RateLimitedLog


def test_feedback_values_are_latest_wins_per_address() -> None:
    q = FeedbackQueue()
    for i in range(5000):
        q.put(("params", {"strength": i / 5000, f"p{i % 10}": i}))
        q.put(("status", {"fps": float(i)}))
    assert len(q) == 11 + 1  # one slot per parameter and per status key, not 10,000 items
    params, status, errors, dropped = q.take(0)
    assert params["strength"] == 4999 / 5000 and params["p9"] == 4999 and len(params) == 11
    assert status == {"fps": 4999.0} and errors == [] and dropped == 0
    assert len(q) == 0


def test_feedback_errors_are_capped_and_counted() -> None:
    q = FeedbackQueue(max_errors=64)
    for i in range(10_000):
        q.put(("error", ("/sd/strength", f"bad {i}")))
    params, status, errors, dropped = q.take(0)
    assert len(errors) == 64 and errors[0] == ("/sd/strength", "bad 0")
    assert dropped == 10_000 - 64 and q.dropped_total == dropped
    assert q.take(0)[3] == 0  # the count is reported once


def test_unknown_feedback_kind_is_dropped_not_raised(caplog) -> None:
    q = FeedbackQueue()
    with caplog.at_level(logging.WARNING):
        q.put(("nonsense", {}))
        q.put(("nonsense", {}))
    assert len(q) == 0 and len([r for r in caplog.records if "nonsense" in r.getMessage()]) == 1


def test_feedback_take_wakes_on_put() -> None:
    q = FeedbackQueue()
    got: list = []
    t = threading.Thread(target=lambda: got.append(q.take(5.0)))
    t.start()
    q.put(("params", {"mix": 0.5}))
    t.join(2.0)
    assert got and got[0][0] == {"mix": 0.5}


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rejected_log_is_rate_limited_with_a_count(caplog) -> None:
    clock = _Clock()
    logger = logging.getLogger("test.ratelog")
    rl = RateLimitedLog(logger, logging.INFO, what="rejected", interval=1.0, burst=5, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        for i in range(10_000):
            rl.log("rejected %s: %s", "/sd/x", i)
            clock.t += 0.00005  # 10,000 in 0.5 s
        rl.skip(34)  # dropped before reaching the log (e.g. the capped error queue)
        assert rl.flush() == 0  # the interval is not over yet
        clock.t += 0.6
        assert rl.flush() == 10_000 - 5 + 34
    lines = [r.getMessage() for r in caplog.records if r.name == "test.ratelog"]
    assert lines[:5] == [f"rejected /sd/x: {i}" for i in range(5)]
    assert len(lines) == 6
    assert lines[5].startswith("... and 10029 more rejected in the last 1.1 s")
    assert rl.logged == 6 and rl.dropped_total == 10_029
    clock.t += 5
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        assert rl.log("rejected %s", "again")  # a new interval logs again at once
        assert rl.flush() == 0


def test_errors_dropped_by_the_queue_are_counted_in_the_next_reply() -> None:
    from bridge.control.feedback import FeedbackSender

    sent: list[bytes] = []

    class Transport:
        def resolve(self, host, port):
            return (host, port)

        def send(self, data, dest):
            sent.append(data)

        def close(self):
            pass

    fb = FeedbackSender([("127.0.0.1", 9)], transport=Transport())
    fb.count_suppressed(1234)
    assert fb.send_error("/sd/x", "bad")
    assert b"(1234 earlier errors suppressed)" in sent[-1]
    assert fb.stats()["errors_suppressed"] == 1234
