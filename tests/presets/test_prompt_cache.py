"""PromptCache: LRU + pinning, one background encoder, de-duplication, debounce, pre-warm."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from bridge.prompt_cache import PromptCache

from .conftest import wait_for


class Encoder:
    """A fake text encoder: records calls, optionally slow, optionally failing, can be held."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.calls: list[str] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, text: str) -> tuple[str, str]:
        self.started.set()
        self.gate.wait(5.0)
        with self.lock:
            self.calls.append(text)
            self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if text == self.fail_on:
            raise RuntimeError(f"cannot encode {text}")
        return ("emb", text)


@pytest.fixture
def make_cache() -> Iterator:
    caches: list[PromptCache] = []

    def make(encoder: Encoder, **kwargs) -> PromptCache:
        cache = PromptCache(encoder, **kwargs)
        caches.append(cache)
        return cache

    yield make
    for c in caches:
        c.stop()


class Ready:
    def __init__(self) -> None:
        self.got: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def __call__(self, text: str, emb: object) -> None:
        with self.lock:
            self.got.append((text, emb))

    def texts(self) -> list[str]:
        with self.lock:
            return [t for t, _ in self.got]


def fill(cache: PromptCache, texts: list[str]) -> None:
    for t in texts:
        cache.request(t)
    assert wait_for(lambda: all(t in cache for t in texts))


def test_request_miss_then_hit(make_cache) -> None:
    enc = Encoder()
    cache = make_cache(enc)
    ready = Ready()
    assert cache.request("a cat", ready) is None
    assert wait_for(lambda: ready.texts() == ["a cat"])
    assert ready.got[0][1] == ("emb", "a cat")
    assert cache.request("a cat") == ("emb", "a cat")
    assert cache.get("a cat") == ("emb", "a cat")
    s = cache.stats()
    assert (s.misses, s.hits, s.encodes, s.queue_depth) == (1, 2, 1, 0)
    assert enc.threads == {"prompt-encoder"}  # encoding happens on the encoder thread only


def test_lru_evicts_least_recently_used(make_cache) -> None:
    cache = make_cache(Encoder(), capacity=3)
    fill(cache, ["a", "b", "c"])
    assert cache.get("a") is not None  # a is now the most recently used
    fill(cache, ["d"])
    assert "b" not in cache
    assert all(t in cache for t in ["a", "c", "d"])
    fill(cache, ["e"])
    assert "c" not in cache
    assert cache.stats().evictions == 2


def test_pinned_entries_are_never_evicted(make_cache) -> None:
    cache = make_cache(Encoder(), capacity=2)
    handle = cache.prewarm(["preset one", "preset two", "preset three"])
    assert handle.wait(2.0)
    fill(cache, ["x", "y"])
    fill(cache, ["z", "w"])
    assert "x" not in cache and "y" not in cache
    assert all(t in cache for t in ["preset one", "preset two", "preset three"])
    assert cache.stats().cached == 3 + 2
    # presets changed: "preset one" is gone, so it becomes an ordinary (most recent) LRU entry
    cache.set_pinned(["preset two", "preset three", "preset four"])
    assert cache.pinned() == {"preset two", "preset three", "preset four"}
    assert "preset one" in cache and "z" not in cache
    fill(cache, ["v", "u"])
    assert "preset one" not in cache
    assert "preset two" in cache and "preset three" in cache


def test_concurrent_requests_are_encoded_once(make_cache) -> None:
    enc = Encoder()
    enc.gate.clear()  # hold the encoder so every request arrives while the first is pending
    cache = make_cache(enc)
    ready = Ready()
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait()
        cache.request("same prompt", ready)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    enc.gate.set()
    assert wait_for(lambda: len(ready.texts()) == 8)
    assert enc.calls == ["same prompt"]
    assert cache.stats().encodes == 1


def test_request_during_an_encode_in_flight_joins_it(make_cache) -> None:
    enc = Encoder()
    enc.gate.clear()
    cache = make_cache(enc)
    first, second = Ready(), Ready()
    cache.request("p", first)
    assert enc.started.wait(2.0)  # now being encoded
    cache.request("p", second)
    enc.gate.set()
    assert wait_for(lambda: first.texts() == ["p"] and second.texts() == ["p"])
    assert enc.calls == ["p"]


def test_debounce_keeps_only_the_latest_text(make_cache) -> None:
    enc = Encoder()
    cache = make_cache(enc)
    ready = Ready()
    typed = "neon city"
    for i in range(1, len(typed) + 1):  # one OSC message per keystroke, 20 ms apart
        assert cache.request_debounced("td/prompt", typed[:i], delay_s=0.15, on_ready=ready) is None
        time.sleep(0.02)
    assert wait_for(lambda: ready.texts() == [typed], timeout=2.0)
    time.sleep(0.3)
    assert enc.calls == [typed]
    # separate keys do not replace each other
    cache.request_debounced("a", "left", delay_s=0.05, on_ready=ready)
    cache.request_debounced("b", "right", delay_s=0.05, on_ready=ready)
    assert wait_for(lambda: sorted(ready.texts()[1:]) == ["left", "right"])


def test_debounce_under_a_steady_stream_still_follows(make_cache) -> None:
    """A sequencer sending a new prompt every 50 ms never pauses for the debounce delay; the
    latest text is still encoded at least every max_wait_s, and the last one lands."""
    enc = Encoder()
    cache = make_cache(enc)
    ready = Ready()
    t0 = time.monotonic()
    for i in range(30):  # 1.5 s of prompts
        cache.request_debounced("seq", f"prompt {i}", delay_s=0.15, on_ready=ready, max_wait_s=0.4)
        time.sleep(0.05)
    during = list(enc.calls)
    assert 2 <= len(during) <= 5, during  # about one per 0.4 s, not one per message, not none
    assert wait_for(lambda: "prompt 29" in ready.texts(), timeout=2.0)
    assert time.monotonic() - t0 < 3.0


def test_debounced_cached_text_returns_at_once_and_cancels_pending(make_cache) -> None:
    enc = Encoder()
    cache = make_cache(enc)
    fill(cache, ["done"])
    cache.request_debounced("k", "half-typed", delay_s=0.1)
    assert cache.request_debounced("k", "done", delay_s=0.1) == ("emb", "done")
    time.sleep(0.3)
    assert enc.calls == ["done"]


def test_encode_error_is_reported_and_thread_keeps_working(make_cache) -> None:
    enc = Encoder(fail_on="bad")
    failures: list[tuple[str, str]] = []
    cache = make_cache(enc, on_error=lambda text, exc: failures.append((text, str(exc))))
    ready = Ready()
    cache.request("bad", ready)
    cache.request("good", ready)
    assert wait_for(lambda: ready.texts() == ["good"])
    assert failures == [("bad", "cannot encode bad")]
    assert "bad" not in cache
    s = cache.stats()
    assert (s.errors, s.encodes) == (1, 1)
    # a failed text can be asked for again
    enc.fail_on = None
    cache.request("bad", ready)
    assert wait_for(lambda: ready.texts() == ["good", "bad"])


def test_callback_exception_does_not_kill_the_thread(make_cache) -> None:
    cache = make_cache(Encoder())

    def broken(text, emb):
        raise ValueError("listener bug")

    cache.request("one", broken)
    ready = Ready()
    cache.request("two", ready)
    assert wait_for(lambda: ready.texts() == ["two"])


def test_prewarm_progress_and_wait(make_cache) -> None:
    cache = make_cache(Encoder(delay=0.01, fail_on="broken"))
    fill(cache, ["already"])
    progress: list[tuple[int, int]] = []
    handle = cache.prewarm(
        ["already", "p1", "p2", "p1", "broken", "p3"], on_progress=lambda d, t: progress.append((d, t))
    )
    assert handle.total == 5  # duplicates counted once
    assert handle.wait(2.0)
    assert handle.finished and handle.progress() == (5, 5)
    assert progress[0] == (1, 5) and progress[-1] == (5, 5)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert set(handle.errors) == {"broken"}
    assert cache.pinned() == {"already", "p1", "p2", "broken", "p3"}


def test_prewarm_wait_times_out_while_encoder_is_held(make_cache) -> None:
    enc = Encoder()
    enc.gate.clear()
    cache = make_cache(enc)
    handle = cache.prewarm(["slow"])
    assert handle.wait(0.1) is False
    assert handle.progress() == (0, 1)
    enc.gate.set()
    assert handle.wait(2.0)


def test_live_requests_go_ahead_of_prewarm(make_cache) -> None:
    enc = Encoder()
    enc.gate.clear()
    cache = make_cache(enc)
    cache.request("first")  # occupies the encoder
    assert enc.started.wait(2.0)
    cache.prewarm([f"warm {i}" for i in range(5)])
    cache.request("live")
    cache.request("warm 3")  # a live request for queued pre-warm work moves it up
    enc.gate.set()
    assert wait_for(lambda: len(enc.calls) == 7)
    assert enc.calls[:3] == ["first", "live", "warm 3"]


def test_request_never_waits_for_a_slow_encoder(make_cache) -> None:
    enc = Encoder(delay=0.2)  # a slow text encoder (0.2 s per prompt)
    cache = make_cache(enc)
    ready = Ready()
    worst = 0.0
    for i in range(5):
        t0 = time.perf_counter()
        assert cache.request(f"prompt {i}", ready) is None
        worst = max(worst, time.perf_counter() - t0)
        time.sleep(0.03)  # requests arrive while an encode is in flight
    assert enc.started.is_set()
    assert worst < 0.02, f"request() blocked for {worst * 1000:.1f} ms"
    t0 = time.perf_counter()
    cache.get("prompt 4")
    cache.stats()
    assert time.perf_counter() - t0 < 0.02
    assert wait_for(lambda: len(ready.texts()) == 5, timeout=3.0)


def test_stop_is_prompt_and_fails_pending_prewarm(make_cache) -> None:
    enc = Encoder()
    enc.gate.clear()
    cache = make_cache(enc)
    cache.request("in flight")
    assert enc.started.wait(2.0)
    handle = cache.prewarm(["queued"])
    enc.gate.set()
    t0 = time.monotonic()
    cache.stop()
    assert time.monotonic() - t0 < 1.0
    assert handle.finished and "queued" in handle.errors
    assert cache.request("after stop") is None
    assert cache.stats().queue_depth == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PromptCache(lambda t: t, capacity=0)


def test_a_bare_string_is_not_a_list_of_prompts(make_cache) -> None:
    cache = make_cache(Encoder())
    with pytest.raises(TypeError):
        cache.prewarm("neon city")
    with pytest.raises(TypeError):
        cache.set_pinned("neon city")
    with pytest.raises(TypeError):
        cache.request(42)
