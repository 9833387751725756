"""Prompt text -> embedding cache with one background encoder thread.

The render loop never encodes: it asks :meth:`PromptCache.request`, which returns the embedding
at once when it is cached and otherwise queues the text for the encoder thread and returns
``None`` (the caller keeps rendering with what it has and is told through ``on_ready``).

* LRU of ``capacity`` unpinned entries; *pinned* entries (every preset's prompts, pre-warmed
  before the show) are never evicted. :meth:`set_pinned` replaces the pinned set when presets
  change; unpinned texts become ordinary LRU entries.
* Requests are de-duplicated: a text queued or being encoded is encoded once and every waiter
  is told. Live requests go ahead of pre-warm work.
* :meth:`request_debounced` keeps only the latest text per key until ``delay_s`` passes without
  a newer one (a TouchDesigner text field sends every keystroke).
* An encode error is logged and passed to ``on_error``; the thread keeps running.
* Callbacks (``on_ready``, ``on_error``, ``on_progress``) run on the encoder thread: keep them
  short (put the result in a mailbox).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("streambridge.prompt_cache")

EncodeFn = Callable[[str], Any]
OnReady = Callable[[str, Any], None]
OnError = Callable[[str, BaseException], None]
OnProgress = Callable[[int, int], None]
# internal: (text, embedding or None, error or None)
_Waiter = Callable[[str, Any, "BaseException | None"], None]


def _texts(texts: Iterable[str]) -> list[str]:
    """A list of prompt texts; a bare string is refused (it would iterate its characters)."""
    if isinstance(texts, str):
        raise TypeError("expected a collection of prompt texts, got a single str")
    out = list(texts)
    for t in out:
        if not isinstance(t, str):
            raise TypeError(f"prompt text must be a str, got {type(t).__name__}")
    return out


def _short(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    encodes: int  # successful encodes
    errors: int  # failed encodes
    evictions: int
    queue_depth: int  # texts waiting to be encoded (not counting debounced ones)
    debounced: int  # keys waiting for their debounce delay
    cached: int  # entries held, pinned included
    pinned: int  # texts pinned (encoded or not)


class PrewarmHandle:
    """Progress of one :meth:`PromptCache.prewarm` call."""

    def __init__(self, texts: list[str], on_progress: OnProgress | None) -> None:
        self._cond = threading.Condition()
        self._pending = set(texts)
        self._total = len(texts)
        self._done = 0
        self._errors: dict[str, str] = {}
        self._on_progress = on_progress

    def _finish(self, text: str, error: BaseException | None) -> None:
        self._finish_many([text], error)

    def _finish_many(self, texts: list[str], error: BaseException | None = None) -> None:
        with self._cond:
            hit = [t for t in texts if t in self._pending]
            if not hit:
                return
            for text in hit:
                self._pending.discard(text)
                self._done += 1
                if error is not None:
                    self._errors[text] = f"{type(error).__name__}: {error}"
            done, total = self._done, self._total
            self._cond.notify_all()
        if self._on_progress is not None:
            try:
                self._on_progress(done, total)
            except Exception:
                log.exception("prewarm progress callback failed")

    @property
    def done(self) -> int:
        with self._cond:
            return self._done

    @property
    def total(self) -> int:
        return self._total

    def progress(self) -> tuple[int, int]:
        """``(done, total)``; failed encodes count as done (see :attr:`errors`)."""
        with self._cond:
            return self._done, self._total

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._done >= self._total

    @property
    def errors(self) -> dict[str, str]:
        """Texts that failed to encode -> reason."""
        with self._cond:
            return dict(self._errors)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every text is done (or failed); True if finished within ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= self._total, timeout)


class PromptCache:
    """LRU + pinned cache of prompt embeddings, filled by one background encoder thread."""

    def __init__(
        self,
        encode_fn: EncodeFn,
        capacity: int = 64,
        *,
        on_error: OnError | None = None,
        name: str = "prompt-encoder",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 (got {capacity})")
        self._encode_fn = encode_fn
        self._capacity = capacity
        self._on_error = on_error
        self._cond = threading.Condition()
        self._lru: OrderedDict[str, Any] = OrderedDict()  # unpinned, oldest first
        self._pinned_values: dict[str, Any] = {}
        self._pinned: set[str] = set()
        self._high: deque[str] = deque()  # live requests
        self._low: deque[str] = deque()  # pre-warm
        self._waiters: dict[str, list[_Waiter]] = {}  # queued or in flight -> who to tell
        self._debounce: dict[Any, tuple[float, str, OnReady | None]] = {}
        self._burst_start: dict[Any, float] = {}  # when the key's pending burst began
        self._hits = self._misses = self._encodes = self._errors = self._evictions = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- lookups (never block on encoding) ----

    def _lookup(self, text: str) -> tuple[bool, Any]:
        # caller holds the lock
        if text in self._pinned_values:
            return True, self._pinned_values[text]
        if text in self._lru:
            self._lru.move_to_end(text)
            return True, self._lru[text]
        return False, None

    def get(self, text: str) -> Any | None:
        """The cached embedding for ``text`` or None (counts a hit or a miss; queues nothing)."""
        with self._cond:
            found, value = self._lookup(text)
            if found:
                self._hits += 1
            else:
                self._misses += 1
            return value

    def __contains__(self, text: object) -> bool:
        with self._cond:
            return text in self._pinned_values or text in self._lru

    def request(self, text: str, on_ready: OnReady | None = None) -> Any | None:
        """Return the cached embedding now, or queue ``text`` and return None.

        When queued, ``on_ready(text, embedding)`` is called on the encoder thread once it is
        encoded (not on failure: see ``on_error``). A text already queued or being encoded is
        not queued twice. If the cache is stopped, nothing is queued.
        """
        if not isinstance(text, str):
            raise TypeError(f"prompt text must be a str, got {type(text).__name__}")
        with self._cond:
            found, value = self._lookup(text)
            if found:
                self._hits += 1
                return value
            self._misses += 1
            if self._stopping:
                log.debug("prompt cache stopped; not queueing %s", _short(text))
                return None
            waiter = _ready_waiter(on_ready) if on_ready is not None else None
            self._enqueue(text, waiter, high=True)
            return None

    def _enqueue(self, text: str, waiter: _Waiter | None, high: bool) -> None:
        # caller holds the lock
        if text in self._waiters:
            if waiter is not None:
                self._waiters[text].append(waiter)
            if high and text in self._low:  # a live request overtakes queued pre-warm work
                self._low.remove(text)
                self._high.append(text)
            return
        self._waiters[text] = [waiter] if waiter is not None else []
        (self._high if high else self._low).append(text)
        self._cond.notify_all()

    def request_debounced(
        self,
        key: Any,
        text: str,
        delay_s: float = 0.15,
        on_ready: OnReady | None = None,
        max_wait_s: float = 0.4,
    ) -> Any | None:
        """Like :meth:`request`, but a newer text for ``key`` within ``delay_s`` replaces this one.

        Returns the embedding at once if ``text`` is cached (and cancels the key's pending
        text). Otherwise the text is queued once ``delay_s`` has passed with no newer text for
        ``key``; then ``on_ready(text, embedding)`` is called (also if it was cached by then).
        Under a steady stream of new texts (a sequencer sending a prompt every 100 ms) the
        latest one is still queued at most ``max_wait_s`` after the first one of the burst, so
        the picture keeps following instead of waiting for the stream to stop.
        """
        if not isinstance(text, str):
            raise TypeError(f"prompt text must be a str, got {type(text).__name__}")
        with self._cond:
            found, value = self._lookup(text)
            if found:
                self._hits += 1
                self._debounce.pop(key, None)
                self._burst_start.pop(key, None)
                return value
            if self._stopping:
                return None
            now = time.monotonic()
            deadline = now + max(0.0, delay_s)
            pending = self._debounce.get(key)
            if pending is None:
                self._burst_start[key] = now
            else:
                deadline = min(deadline, self._burst_start.get(key, now) + max(delay_s, max_wait_s))
            self._debounce[key] = (deadline, text, on_ready)
            self._cond.notify_all()
            return None

    # ---- pinning and pre-warm ----

    def pin(self, texts: Iterable[str]) -> None:
        """Never evict these texts (encoded or not yet)."""
        items = _texts(texts)
        with self._cond:
            self._pin_locked(items)

    def unpin(self, texts: Iterable[str]) -> None:
        """Make these texts ordinary LRU entries again (most recently used first)."""
        items = _texts(texts)
        with self._cond:
            self._unpin_locked(items)

    def set_pinned(self, texts: Iterable[str]) -> None:
        """Replace the pinned set (e.g. every preset's prompts after a reload)."""
        wanted = set(_texts(texts))
        with self._cond:
            self._unpin_locked(self._pinned - wanted)
            self._pin_locked(wanted)

    def _pin_locked(self, texts: Iterable[str]) -> None:
        for text in texts:
            self._pinned.add(text)
            if text in self._lru:
                self._pinned_values[text] = self._lru.pop(text)

    def _unpin_locked(self, texts: Iterable[str]) -> None:
        for text in list(texts):
            self._pinned.discard(text)
            if text in self._pinned_values:
                self._lru[text] = self._pinned_values.pop(text)
        self._evict()

    def pinned(self) -> set[str]:
        with self._cond:
            return set(self._pinned)

    def prewarm(
        self, texts: Iterable[str], pin: bool = True, on_progress: OnProgress | None = None
    ) -> PrewarmHandle:
        """Encode ``texts`` in the background (after live requests); returns a progress handle.

        Texts already cached count as done at once. ``on_progress(done, total)`` is called
        after each text is encoded or fails (on the encoder thread), and once on the calling
        thread for the texts that were already cached (or with ``(0, 0)`` for no texts). Texts
        dropped by :meth:`stop` count as failed.
        """
        unique = list(dict.fromkeys(_texts(texts)))
        handle = PrewarmHandle(unique, on_progress)
        cached: list[str] = []
        skipped: list[str] = []
        with self._cond:
            if pin:
                self._pin_locked(unique)
            for text in unique:
                if text in self._pinned_values or text in self._lru:
                    cached.append(text)
                elif self._stopping:
                    skipped.append(text)
                else:
                    self._enqueue(text, _handle_waiter(handle), high=False)
        if skipped:
            handle._finish_many(skipped, RuntimeError("prompt cache is stopped"))
        if cached:
            handle._finish_many(cached)
        elif not unique and on_progress is not None:
            on_progress(0, 0)
        return handle

    # ---- stats / stop ----

    def stats(self) -> CacheStats:
        with self._cond:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                encodes=self._encodes,
                errors=self._errors,
                evictions=self._evictions,
                queue_depth=len(self._high) + len(self._low),
                debounced=len(self._debounce),
                cached=len(self._lru) + len(self._pinned_values),
                pinned=len(self._pinned),
            )

    @property
    def capacity(self) -> int:
        return self._capacity

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the encoder thread. An encode in progress is allowed to finish (up to ``timeout``)."""
        with self._cond:
            self._stopping = True
            dropped = [(t, self._waiters.pop(t, [])) for t in (*self._high, *self._low)]
            self._high.clear()
            self._low.clear()
            self._debounce.clear()
            self._burst_start.clear()
            self._cond.notify_all()
        stopped = RuntimeError("prompt cache is stopped")
        for text, waiters in dropped:
            for waiter in waiters:
                try:
                    waiter(text, None, stopped)
                except Exception:
                    log.exception("prompt cache callback failed")
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("prompt encoder still busy after %.1f s; leaving it (daemon thread)", timeout)

    # ---- the encoder thread ----

    def _evict(self) -> None:
        # caller holds the lock
        while len(self._lru) > self._capacity:
            text, _ = self._lru.popitem(last=False)
            self._evictions += 1
            log.debug("prompt cache evicted %s", _short(text))

    def _store(self, text: str, value: Any) -> None:
        # caller holds the lock
        if text in self._pinned:
            self._pinned_values[text] = value
        else:
            self._lru[text] = value
            self._lru.move_to_end(text)
            self._evict()

    def _next_job(self) -> tuple[str | None, list[tuple[OnReady, str, Any]]]:
        """Wait for work: (text to encode or None, debounced callbacks whose text is cached).

        Returns ``(None, [])`` when stopping. Due debounced texts are queued here.
        """
        with self._cond:
            while True:
                if self._stopping:
                    return None, []
                now = time.monotonic()
                ready: list[tuple[OnReady, str, Any]] = []
                for key in [k for k, (deadline, _, _) in self._debounce.items() if deadline <= now]:
                    _, text, on_ready = self._debounce.pop(key)
                    self._burst_start.pop(key, None)
                    found, value = self._lookup(text)
                    if found:
                        self._hits += 1
                        if on_ready is not None:
                            ready.append((on_ready, text, value))
                    else:
                        self._misses += 1
                        self._enqueue(text, _ready_waiter(on_ready) if on_ready else None, high=True)
                if self._high:
                    return self._high.popleft(), ready
                if self._low:
                    return self._low.popleft(), ready
                if ready:
                    return None, ready
                timeout = None
                if self._debounce:
                    timeout = max(0.0, min(d for d, _, _ in self._debounce.values()) - time.monotonic())
                self._cond.wait(timeout)

    def _run(self) -> None:
        while True:
            text, ready = self._next_job()
            for on_ready, ready_text, value in ready:
                _call_ready(on_ready, ready_text, value)
            if text is None:
                if ready:
                    continue
                return
            self._encode_one(text)

    def _encode_one(self, text: str) -> None:
        error: BaseException | None = None
        value: Any = None
        t0 = time.perf_counter()
        try:
            value = self._encode_fn(text)
        except Exception as exc:
            error = exc
        dt_ms = (time.perf_counter() - t0) * 1000.0
        with self._cond:
            waiters = self._waiters.pop(text, [])
            if error is None:
                self._encodes += 1
                self._store(text, value)
            else:
                self._errors += 1
        if error is None:
            log.debug("encoded %s in %.1f ms", _short(text), dt_ms)
        else:
            log.error("encoding prompt %s failed: %s: %s", _short(text), type(error).__name__, error)
            if self._on_error is not None:
                try:
                    self._on_error(text, error)
                except Exception:
                    log.exception("prompt cache on_error callback failed")
        for waiter in waiters:
            try:
                waiter(text, value, error)
            except Exception:
                log.exception("prompt cache callback failed")


def _call_ready(on_ready: OnReady, text: str, value: Any) -> None:
    try:
        on_ready(text, value)
    except Exception:
        log.exception("prompt cache on_ready callback failed")


def _ready_waiter(on_ready: OnReady) -> _Waiter:
    def waiter(text: str, value: Any, error: BaseException | None) -> None:
        if error is None:
            on_ready(text, value)

    return waiter


def _handle_waiter(handle: PrewarmHandle) -> _Waiter:
    def waiter(text: str, value: Any, error: BaseException | None) -> None:
        handle._finish(text, error)

    return waiter
