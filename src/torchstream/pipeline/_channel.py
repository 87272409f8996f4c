"""Bounded, closable channels: the only way pipeline threads talk to each other."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from torchstream._errors import ClosedResourceError, OverloadedError

__all__ = ["Channel", "ChannelStatistics", "EndOfChannel", "Policy"]

T = TypeVar("T")

Policy = Literal["block", "latest"]
"""What a put does when its key's quota (or the channel) is full.

``block``: wait for room (files: nothing is lost, the reader slows down).
``latest``: drop the oldest droppable item of the same key and keep the new one (live streams:
always work on the newest frame; every drop is returned to the caller so it can be counted).
"""


class EndOfChannel(Exception):
    """``get`` found the channel closed and drained: the producer side is done."""


@dataclass(frozen=True)
class ChannelStatistics:
    name: str
    capacity: int
    size: int
    put_total: int
    get_total: int
    dropped_total: int
    closed: bool


class Channel(Generic[T]):
    """A bounded FIFO shared by producers and one or more consumers.

    ``capacity`` bounds the items in the channel. ``per_key_capacity`` optionally bounds the
    items of any one key (a source id), so one fast source cannot fill the channel and a
    ``latest`` source drops only its own frames.

    ``put`` blocks while full (``block``) or drops the key's oldest droppable item
    (``latest``); ``put_nowait`` raises :class:`OverloadedError` instead of waiting. Items for
    which ``droppable`` returns False (control markers) are never dropped and always wait for
    room. ``close`` lets consumers drain what is left, then ``get`` raises
    :class:`EndOfChannel`; a put after close raises :class:`ClosedResourceError`.
    """

    def __init__(
        self,
        name: str,
        capacity: int,
        *,
        per_key_capacity: int | None = None,
        droppable: Callable[[T], bool] = lambda item: True,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if per_key_capacity is not None and not 1 <= per_key_capacity <= capacity:
            raise ValueError(
                f"per_key_capacity must be in [1, capacity={capacity}], got {per_key_capacity}"
            )
        self.name = name
        self._capacity = capacity
        self._per_key = per_key_capacity
        self._droppable = droppable
        self._items: collections.deque[tuple[Hashable, T]] = collections.deque()
        self._key_counts: collections.Counter[Hashable] = collections.Counter()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self._put_total = 0
        self._get_total = 0
        self._dropped_total = 0

    def _has_room(self, key: Hashable) -> bool:
        if len(self._items) >= self._capacity:
            return False
        return self._per_key is None or self._key_counts[key] < self._per_key

    def _append(self, key: Hashable, item: T) -> None:
        self._items.append((key, item))
        self._key_counts[key] += 1
        self._put_total += 1
        self._not_empty.notify()

    def _drop_oldest(self, key: Hashable) -> T | None:
        for index, (k, old) in enumerate(self._items):
            if k == key and self._droppable(old):
                del self._items[index]
                self._key_counts[key] -= 1
                self._dropped_total += 1
                return old
        return None

    def put(
        self, item: T, *, key: Hashable = None, policy: Policy = "block"
    ) -> list[T]:
        """Put ``item``; return the items dropped to make room (only under ``latest``)."""
        dropped: list[T] = []
        with self._lock:
            if self._closed:
                raise ClosedResourceError(f"channel {self.name!r} is closed")
            if policy == "latest" and self._droppable(item):
                while not self._has_room(key):
                    old = self._drop_oldest(key)
                    if old is None:
                        break
                    dropped.append(old)
            while not self._has_room(key):
                self._not_full.wait()
                if self._closed:
                    raise ClosedResourceError(f"channel {self.name!r} is closed")
            self._append(key, item)
        return dropped

    def put_nowait(self, item: T, *, key: Hashable = None) -> None:
        """Put ``item`` or raise :class:`OverloadedError` if there is no room."""
        with self._lock:
            if self._closed:
                raise ClosedResourceError(f"channel {self.name!r} is closed")
            if not self._has_room(key):
                raise OverloadedError(f"channel {self.name!r} is full")
            self._append(key, item)

    def get(self, timeout_seconds: float | None = None) -> T:
        """Take the oldest item, waiting up to ``timeout_seconds`` (None: forever).

        Raises :class:`TimeoutError` when the wait ran out and :class:`EndOfChannel` when the
        channel is closed and empty.
        """
        with self._lock:
            if timeout_seconds is None:
                while not self._items:
                    if self._closed:
                        raise EndOfChannel(self.name)
                    self._not_empty.wait()
            else:
                deadline = time.monotonic() + timeout_seconds
                while not self._items:
                    if self._closed:
                        raise EndOfChannel(self.name)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(self.name)
                    self._not_empty.wait(remaining)
            key, item = self._items.popleft()
            self._key_counts[key] -= 1
            if self._key_counts[key] == 0:
                del self._key_counts[key]
            self._get_total += 1
            self._not_full.notify_all()
            return item

    def get_many(self, max_items: int, timeout_seconds: float | None = None) -> list[T]:
        """Take up to ``max_items`` of the oldest items at once (at least one: waits like
        :meth:`get`, raising :class:`TimeoutError` / :class:`EndOfChannel` the same way).

        Consumers that drain in bulk take the lock, and the GIL, once per burst instead of
        once per item: with dozens of producer threads this is what keeps a consumer from
        starving behind them.
        """
        first = self.get(timeout_seconds)
        items = [first]
        with self._lock:
            while self._items and len(items) < max_items:
                key, item = self._items.popleft()
                self._key_counts[key] -= 1
                if self._key_counts[key] == 0:
                    del self._key_counts[key]
                items.append(item)
            self._get_total += len(items) - 1
            if len(items) > 1:
                self._not_full.notify_all()
        return items

    def put_many(self, items: list[T]) -> None:
        """Put every item in order, blocking for room as needed (no key, no dropping)."""
        with self._lock:
            for item in items:
                while not self._has_room(None):
                    if self._closed:
                        raise ClosedResourceError(f"channel {self.name!r} is closed")
                    self._not_empty.notify_all()  # let consumers take what is already in
                    self._not_full.wait()
                if self._closed:
                    raise ClosedResourceError(f"channel {self.name!r} is closed")
                self._items.append((None, item))
                self._key_counts[None] += 1
                self._put_total += 1
            self._not_empty.notify_all()

    def close(self) -> None:
        """Refuse further puts; consumers drain what is left. Idempotent."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def statistics(self) -> ChannelStatistics:
        with self._lock:
            return ChannelStatistics(
                name=self.name,
                capacity=self._capacity,
                size=len(self._items),
                put_total=self._put_total,
                get_total=self._get_total,
                dropped_total=self._dropped_total,
                closed=self._closed,
            )
