from __future__ import annotations

import json
import threading

import pytest

from bridge.runtime.mailbox import LatestMailbox
from bridge.runtime.metrics import LatencyStats, Metrics, RateMeter

from .conftest import FakeClock


def test_rate_meter_steady_then_decays() -> None:
    meter = RateMeter(window_s=1.0)
    t = 0.0
    for _ in range(120):
        t += 1 / 60
        meter.tick(t)
    assert meter.rate(t) == pytest.approx(60.0, rel=1e-6)
    assert meter.rate(t + 0.01) == pytest.approx(60.0, rel=1e-6)  # inside the next interval
    assert meter.rate(t + 0.5) < 40.0  # stream stopped: the open gap counts
    assert meter.rate(t + 1.01) == 0.0
    assert meter.total == 120


def test_rate_meter_beyond_ring_capacity() -> None:
    meter = RateMeter(window_s=1.0, capacity=64)
    t = 0.0
    for _ in range(3000):
        t += 0.001
        meter.tick(t)
    assert meter.rate(t) == pytest.approx(1000.0, rel=1e-3)


def test_rate_meter_needs_two_events() -> None:
    meter = RateMeter()
    assert meter.rate(5.0) == 0.0
    meter.tick(5.0)
    assert meter.rate(5.0) == 0.0


def test_latency_percentiles_in_ms() -> None:
    stats = LatencyStats(capacity=1000)
    for ms in range(1, 101):
        stats.add(ms / 1000)
    snap = stats.snapshot()
    assert snap["count"] == 100
    assert snap["p50_ms"] == pytest.approx(50.5)
    assert snap["p95_ms"] == pytest.approx(95.05)
    assert snap["max_ms"] == pytest.approx(100.0)
    assert snap["last_ms"] == pytest.approx(100.0)
    stats.add(float("nan"))
    assert stats.count == 100


def test_latency_ring_keeps_only_recent_samples() -> None:
    stats = LatencyStats(capacity=10)
    for _ in range(100):
        stats.add(1.0)
    for _ in range(10):
        stats.add(0.002)
    assert stats.percentile(95) == pytest.approx(2.0)
    assert stats.count == 110
    assert LatencyStats().snapshot()["p50_ms"] is None


def test_metrics_snapshot_is_plain_json() -> None:
    clock = FakeClock()
    metrics = Metrics(clock=clock)
    box: LatestMailbox[int] = LatestMailbox(name="input")
    metrics.add_mailbox("input", box)
    for i in range(61):
        metrics.count("captured")
        box.put(i)
        clock.advance(1 / 60)
    clock.advance(-1 / 60)
    metrics.count("rejected_frames", 2)
    metrics.count("sink_errors:0:ndi")
    metrics.record_latency("end_to_end", 0.033)
    metrics.set_state("source", "live")
    snap = metrics.snapshot()
    json.dumps(snap)
    assert snap["counters"]["captured"] == 61
    assert snap["counters"]["rejected_frames"] == 2
    assert snap["counters"]["sink_errors:0:ndi"] == 1
    assert snap["counters"]["published"] == 0
    assert snap["fps"]["captured"] == pytest.approx(60.0, rel=1e-3)
    assert snap["latency_ms"]["end_to_end"]["p50_ms"] == pytest.approx(33.0)
    assert snap["mailboxes"]["input"]["dropped"] == 60
    assert snap["dropped"] == {"input": 60}
    assert snap["states"] == {"source": "live"}
    assert metrics.counter("captured") == 61
    assert metrics.state("source") == "live"


def test_metrics_counting_is_thread_safe() -> None:
    metrics = Metrics()

    def work() -> None:
        for _ in range(5000):
            metrics.count("processed")
            metrics.count("custom")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metrics.counter("processed") == 20000
    assert metrics.counter("custom") == 20000
