"""Matching results to the requests that caused them, for request/response services: a
sans-IO table of pending requests, with a thread-safe :class:`Matcher` (concurrent futures)
and an :class:`AsyncMatcher` (asyncio futures) around it."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from torchstream._errors import ClosedResourceError, OverloadedError
from torchstream.client._requests import SendResult
from torchstream.client._results import Result

__all__ = ["AsyncMatcher", "Matcher", "MatcherStatistics"]

_Key = tuple[str, str, "int | None", bool]
_F = TypeVar("_F")


def _key(item: SendResult | Result) -> _Key | None:
    # A trace id alone is not unique: every request made inside one OpenTelemetry span shares
    # its trace. With the source id, the seq and the end-of-stream flag it is.
    if item.trace_id is None:  # a result whose pipeline did not pass the trace on
        return None
    return (item.trace_id, item.source_id, item.seq, item.end_of_stream)


@dataclass(frozen=True)
class MatcherStatistics:
    pending: int
    matched: int
    unmatched: int
    """Results that matched no pending request: another client's, or one that came after
    its request timed out or was cancelled. Counted, never an error."""
    expired: int
    """Requests failed with TimeoutError."""


class _Pending(Generic[_F]):
    """Pending requests by key, oldest first, each with its deadline. Sans-IO: the caller
    passes the time and resolves what comes out."""

    def __init__(self, max_pending: int, timeout_seconds: float) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds}")
        self.max_pending = max_pending
        self.timeout_seconds = timeout_seconds
        self._entries: collections.OrderedDict[_Key, tuple[_F, float]] = (
            collections.OrderedDict()
        )
        self.matched = 0
        self.unmatched = 0
        self.expired = 0

    def add(self, sent: SendResult, item: _F, now: float) -> _Key:
        key = (sent.trace_id, sent.source_id, sent.seq, sent.end_of_stream)
        if key in self._entries:
            raise ValueError(f"{sent} is already expected")
        if len(self._entries) >= self.max_pending:
            raise OverloadedError(
                f"{len(self._entries)} requests are pending, the limit is max_pending="
                f"{self.max_pending}: results are not coming back fast enough"
            )
        self._entries[key] = (item, now + self.timeout_seconds)
        return key

    def match(self, result: Result) -> _F | None:
        key = _key(result)
        entry = None if key is None else self._entries.pop(key, None)
        if entry is None:
            self.unmatched += 1
            return None
        self.matched += 1
        return entry[0]

    def discard(self, key: _Key) -> _F | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[0]

    def overdue(self, now: float) -> list[_F]:
        """Remove and return the requests whose deadline has passed."""
        items = []
        while self._entries:
            key, (item, deadline) = next(iter(self._entries.items()))
            if deadline > now:  # one timeout for all: deadlines are in insertion order
                break
            del self._entries[key]
            items.append(item)
        self.expired += len(items)
        return items

    def drain(self) -> list[_F]:
        items = [item for item, _ in self._entries.values()]
        self._entries.clear()
        return items

    def statistics(self) -> MatcherStatistics:
        return MatcherStatistics(len(self._entries), self.matched, self.unmatched, self.expired)


def _timeout_error(timeout_seconds: float) -> TimeoutError:
    return TimeoutError(f"no result within {timeout_seconds} s")


class Matcher:
    """Routes results to the requests that caused them, with concurrent futures.

    ``future = matcher.expect(sent)`` for a :class:`SendResult`, then feed it every result
    received (``matcher.deliver(result)``, typically from a thread iterating a
    :class:`Sink`): the future completes with the result of the same trace id, source and
    seq. At most ``max_pending`` requests wait (:meth:`expect` raises
    :class:`~torchstream.OverloadedError` beyond); results nobody waits for are counted in
    :meth:`statistics`, not errors. A request still waiting ``timeout_seconds`` after
    :meth:`expect` fails with ``TimeoutError`` at the next :meth:`expect`, :meth:`deliver`
    or :meth:`expire` (there is no timer thread): for an exact bound, wait with
    ``future.result(timeout=...)``. Cancelling a future withdraws its request.
    Thread-safe.
    """

    def __init__(
        self,
        *,
        max_pending: int = 1024,
        timeout_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._table: _Pending[concurrent.futures.Future[Result]] = _Pending(
            max_pending, timeout_seconds
        )
        self._clock = clock
        self._lock = threading.Lock()

    def expect(self, sent: SendResult) -> concurrent.futures.Future[Result]:
        """A future for the result of the request ``sent`` describes."""
        future: concurrent.futures.Future[Result] = concurrent.futures.Future()
        with self._lock:
            now = self._clock()
            overdue = self._table.overdue(now)
            try:
                key = self._table.add(sent, future, now)
            except (OverloadedError, ValueError) as exc:
                error: Exception | None = exc
            else:
                error = None
        self._fail(overdue)
        if error is not None:
            raise error
        future.add_done_callback(lambda f: self._withdraw(f, key))
        return future

    def deliver(self, result: Result) -> bool:
        """Complete the request ``result`` answers; False when none is pending (counted)."""
        with self._lock:
            overdue = self._table.overdue(self._clock())
            future = self._table.match(result)
        self._fail(overdue)
        if future is None:
            return False
        try:
            future.set_result(result)
        except concurrent.futures.InvalidStateError:  # cancelled just now
            return False
        return True

    def expire(self) -> int:
        """Fail the requests past their timeout now; returns how many."""
        with self._lock:
            overdue = self._table.overdue(self._clock())
        self._fail(overdue)
        return len(overdue)

    def _fail(self, futures: list[concurrent.futures.Future[Result]]) -> None:
        # Outside the lock: completing a future runs its callbacks.
        for future in futures:
            if not future.done():
                future.set_exception(_timeout_error(self._table.timeout_seconds))

    def _withdraw(self, future: concurrent.futures.Future[Result], key: _Key) -> None:
        if future.cancelled():
            with self._lock:
                self._table.discard(key)

    def close(self, error: BaseException | None = None) -> None:
        """Fail every pending request with ``error`` (default: ClosedResourceError)."""
        with self._lock:
            futures = self._table.drain()
        for future in futures:
            if not future.done():
                future.set_exception(error or ClosedResourceError("the matcher was closed"))

    def statistics(self) -> MatcherStatistics:
        with self._lock:
            return self._table.statistics()


class AsyncMatcher:
    """:class:`Matcher` for asyncio: :meth:`expect` returns an ``asyncio.Future``, and a
    timer of the event loop fails it with ``TimeoutError`` exactly ``timeout_seconds``
    later. Cancelling the future (or the task awaiting it) withdraws the request. Call it
    from the event loop's thread only. :meth:`close` fails what is still pending."""

    def __init__(self, *, max_pending: int = 1024, timeout_seconds: float = 30.0) -> None:
        self._table: _Pending[asyncio.Future[Result]] = _Pending(max_pending, timeout_seconds)

    def expect(self, sent: SendResult) -> asyncio.Future[Result]:
        """A future for the result of the request ``sent`` describes (in a running loop)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        key = self._table.add(sent, future, loop.time())
        timer = loop.call_later(self._table.timeout_seconds, self._expire, key)
        future.add_done_callback(lambda f: self._done(f, key, timer))
        return future

    def deliver(self, result: Result) -> bool:
        """Complete the request ``result`` answers; False when none is pending (counted)."""
        future = self._table.match(result)
        if future is None or future.done():
            return False
        future.set_result(result)
        return True

    def _expire(self, key: _Key) -> None:
        future = self._table.discard(key)
        if future is not None and not future.done():
            self._table.expired += 1
            future.set_exception(_timeout_error(self._table.timeout_seconds))

    def _done(self, future: asyncio.Future[Result], key: _Key, timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        if future.cancelled():
            self._table.discard(key)

    def close(self, error: BaseException | None = None) -> None:
        """Fail every pending request with ``error`` (default: ClosedResourceError)."""
        for future in self._table.drain():
            if not future.done():
                future.set_exception(error or ClosedResourceError("the matcher was closed"))

    def statistics(self) -> MatcherStatistics:
        return self._table.statistics()
