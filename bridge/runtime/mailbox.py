"""Bounded latest-wins mailboxes between the runtime threads.

A producer never waits on a slow consumer: when the box is full, :meth:`LatestMailbox.put`
throws away the oldest item and counts it in ``dropped``. A consumer either blocks in
:meth:`LatestMailbox.get` (render thread) or grabs the newest item without waiting with
:meth:`LatestMailbox.take_latest` (publisher).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestMailbox(Generic[T]):
    """A thread-safe latest-wins slot holding at most ``capacity`` items (FIFO among them)."""

    def __init__(self, capacity: int = 1, name: str = "mailbox") -> None:
        if int(capacity) < 1:
            raise ValueError(f"capacity should be >= 1 but is {capacity!r}")
        self.name = name
        self._capacity = int(capacity)
        self._items: deque[tuple[int, float, T]] = deque()  # (put ordinal, put time, item)
        self._taken: tuple[int, float] | None = None
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._put = 0
        self._got = 0
        self._dropped = 0
        self._refused = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T) -> bool:
        """Add ``item`` without ever blocking; the oldest item is dropped when full.

        Returns False (and counts it as ``refused``) only when the mailbox is closed.
        """
        return self.put_many((item,))

    def put_many(self, items: Sequence[T]) -> bool:
        """Add ``items`` in order as one arrival (one put time: a burst such as the frames of one
        stream call); the oldest items are dropped as needed. False when the mailbox is closed."""
        with self._cond:
            if self._closed:
                self._refused += len(items)
                return False
            now = time.monotonic()
            for item in items:
                if len(self._items) >= self._capacity:
                    self._items.popleft()
                    self._dropped += 1
                self._put += 1
                self._items.append((self._put, now, item))
            self._cond.notify_all()
        return True

    def get(self, timeout: float | None = None) -> T | None:
        """Remove and return the oldest item, waiting up to ``timeout`` s (``None``: forever).

        Returns None on timeout, or at once when the mailbox is closed and empty.
        """
        with self._cond:
            if not self._items and not self._closed:
                if timeout is None:
                    while not self._items and not self._closed:
                        self._cond.wait()
                elif timeout > 0:
                    deadline = time.monotonic() + timeout
                    while not self._items and not self._closed:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
            if not self._items:
                return None
            self._got += 1
            ordinal, t, item = self._items.popleft()
            self._taken = (ordinal, t)
            return item

    def take_latest(self) -> T | None:
        """Without waiting, return the newest item (None if empty); older ones count as dropped."""
        with self._cond:
            if not self._items:
                return None
            ordinal, t, item = self._items.pop()
            self._taken = (ordinal, t)
            self._dropped += len(self._items)
            self._items.clear()
            self._got += 1
            return item

    def last_taken(self) -> tuple[int, float] | None:
        """(ordinal among all puts, ``time.monotonic()`` of its put) of the item taken last, or None.

        With one consumer this describes the item it just took: the publisher uses it to lock its
        output ticks to the frames' arrival times."""
        with self._cond:
            return self._taken

    def close(self) -> None:
        """Refuse further puts and wake every waiter. Items already inside can still be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def counters(self) -> dict[str, int]:
        """A consistent snapshot: put, got, dropped, refused, depth, capacity."""
        with self._cond:
            return {
                "put": self._put,
                "got": self._got,
                "dropped": self._dropped,
                "refused": self._refused,
                "depth": len(self._items),
                "capacity": self._capacity,
            }
