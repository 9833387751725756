from __future__ import annotations

import threading
import time

import pytest

from bridge.runtime.mailbox import LatestMailbox


def test_capacity_one_keeps_the_newest_and_counts_drops() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    for i in range(5):
        assert box.put(i) is True
    assert len(box) == 1
    assert box.get(timeout=0) == 4
    assert box.get(timeout=0) is None
    c = box.counters()
    assert (c["put"], c["got"], c["dropped"], c["depth"], c["capacity"]) == (5, 1, 4, 0, 1)


def test_small_capacity_is_fifo_among_the_newest() -> None:
    box: LatestMailbox[int] = LatestMailbox(capacity=3)
    for i in range(5):
        box.put(i)
    assert [box.get(0), box.get(0), box.get(0), box.get(0)] == [2, 3, 4, None]
    assert box.counters()["dropped"] == 2


def test_take_latest_drains_and_counts_the_older_ones() -> None:
    box: LatestMailbox[str] = LatestMailbox(capacity=4)
    assert box.take_latest() is None
    for item in "abc":
        box.put(item)
    assert box.take_latest() == "c"
    assert len(box) == 0
    assert box.counters()["dropped"] == 2


def test_last_taken_describes_the_item_just_taken() -> None:
    box: LatestMailbox[str] = LatestMailbox(capacity=2)
    assert box.last_taken() is None
    t0 = time.monotonic()
    box.put("a")
    time.sleep(0.01)
    t1 = time.monotonic()
    box.put("b")
    box.put("c")  # "a" is dropped
    assert box.get(0) == "b"
    ordinal, t_put = box.last_taken()
    assert ordinal == 2 and t0 <= t_put <= t1 + 0.005 and t_put >= t1
    assert box.take_latest() == "c"
    assert box.last_taken()[0] == 3
    assert box.take_latest() is None and box.last_taken()[0] == 3  # nothing new taken


def test_get_times_out() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    t0 = time.monotonic()
    assert box.get(timeout=0.05) is None
    elapsed = time.monotonic() - t0
    assert 0.045 <= elapsed < 1.0


def test_get_blocks_until_a_put() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    timer = threading.Timer(0.05, box.put, args=(7,))
    t0 = time.monotonic()
    timer.start()
    assert box.get(timeout=2.0) == 7
    assert 0.03 <= time.monotonic() - t0 < 1.5
    timer.join()


def test_close_wakes_waiters_and_refuses_puts() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    results: list[int | None] = []
    waiters = [threading.Thread(target=lambda: results.append(box.get())) for _ in range(3)]
    for w in waiters:
        w.start()
    time.sleep(0.05)
    box.close()
    for w in waiters:
        w.join(1.0)
        assert not w.is_alive()
    assert results == [None, None, None]
    assert box.closed
    assert box.put(1) is False
    assert box.counters()["refused"] == 1


def test_items_left_at_close_can_still_be_taken() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    box.put(3)
    box.close()
    assert box.get(timeout=1.0) == 3
    assert box.get(timeout=1.0) is None


def test_concurrent_producer_and_consumer_account_for_every_item() -> None:
    box: LatestMailbox[int] = LatestMailbox(capacity=2)
    got: list[int] = []
    n = 20000

    def consume() -> None:
        while True:
            item = box.get(timeout=1.0)
            if item is None:
                return
            got.append(item)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(n):
        box.put(i)
    box.close()
    consumer.join(5.0)
    c = box.counters()
    assert c["put"] == n
    assert c["got"] == len(got)
    assert c["got"] + c["dropped"] == n
    assert got == sorted(got)  # never out of order
    assert got[-1] == n - 1  # the newest always gets through


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LatestMailbox(capacity=0)


def test_put_many_is_one_arrival_and_keeps_the_newest() -> None:
    box: LatestMailbox[int] = LatestMailbox(capacity=2)
    box.put(0)
    assert box.put_many([1, 2, 3])  # 0 and 1 make room
    assert box.counters()["dropped"] == 2 and box.counters()["put"] == 4
    assert box.get(0) == 2
    first = box.last_taken()
    assert box.get(0) == 3
    second = box.last_taken()
    assert (first[0], second[0]) == (3, 4) and first[1] == second[1]  # one put time for the burst
    box.close()
    assert not box.put_many([5, 6]) and box.counters()["refused"] == 2
