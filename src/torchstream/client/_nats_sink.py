"""The blocking :class:`NatsSink`: an :class:`~torchstream.client.AsyncNatsSink` run on an event
loop of its own (thread ``ts/nats/sink``), read from the caller's thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Collection, Coroutine, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from torchstream._errors import ClosedResourceError
from torchstream.client._async_nats_sink import AsyncNatsSink
from torchstream.client._results import Result
from torchstream.client._sockets import SinkStatistics, check_timeout

if TYPE_CHECKING:
    from torchstream.nats._layout import Layout
    from torchstream.nats._results import Start

__all__ = ["NatsSink"]

_T = TypeVar("_T")

_CLOSE_TIMEOUT_SECONDS = 10.0


class NatsSink:
    """Reads the results that NATS workers (``torchstream worker``) publish, blocking:
    ``with NatsSink("nats://host:4222", source_ids=["cam-1"]) as sink: for result in sink:
    …``. Needs ``pip install 'torchstream[nats]'``.

    The same options, results and statistics as :class:`~torchstream.client.AsyncNatsSink`
    (read there what ``start`` and the filters do); each result comes once, fenced and
    deduplicated as ``torchstream sink … --nats`` does. Unlike the asyncio flavour it
    connects at construction: it raises :class:`~torchstream.nats.NatsUnavailableError`
    naming the URL when no server answers, and every result published after the
    constructor returns is read (``start="live"``).

    Iterate it (``for result in sink``) for each :class:`~torchstream.client.Result` in
    order, ends of stream included; iteration ends after ``idle_timeout_seconds`` without a
    result (None: never by itself) or once the sink is closed, and may be started again.
    :meth:`recv` returns one result or raises ``TimeoutError``. Use it from one thread at a
    time; :meth:`close` from another thread ends that thread's wait.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        source_ids: Collection[str] | None = None,
        prefix: str | None = None,
        idle_timeout_seconds: float | None = None,
        start: Start = "live",
        layout: Layout | None = None,
        connect_timeout_seconds: float = 5.0,
        max_buffered_results: int = 1024,
    ) -> None:
        self._sink = AsyncNatsSink(
            servers, source_ids=source_ids, prefix=prefix,
            idle_timeout_seconds=idle_timeout_seconds, start=start, layout=layout,
            connect_timeout_seconds=connect_timeout_seconds,
            max_buffered_results=max_buffered_results,
        )
        self.url = self._sink.url
        self.layout = self._sink.layout
        self.start = start
        self.idle_timeout_seconds = idle_timeout_seconds
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ts/nats/sink", daemon=True
        )
        self._thread.start()
        try:
            self._run(self._sink.open())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()  # interrupted (Ctrl-C) or timed out: stop waiting there too
            raise

    def recv(self, timeout_seconds: float | None = None) -> Result:
        """The next result of a wanted source. Raises ``TimeoutError`` when none came within
        ``timeout_seconds`` (None: wait indefinitely), ClosedResourceError once closed."""
        check_timeout("timeout_seconds", timeout_seconds)
        if self._closed:
            raise ClosedResourceError(f"the sink of {self.url} is closed")
        try:
            return self._run(self._sink.recv(timeout_seconds))
        except CancelledError:  # the loop went away under it: closed from another thread
            if not self._closed:
                raise
            raise ClosedResourceError(f"the sink of {self.url} was closed") from None

    def __iter__(self) -> Iterator[Result]:
        while not self._closed:
            try:
                yield self.recv(self.idle_timeout_seconds)
            except (TimeoutError, ClosedResourceError):
                return

    def statistics(self) -> SinkStatistics:
        """Counts so far (read without locking: each count is exact, together they may be a
        message apart)."""
        return self._sink.statistics()

    def close(self) -> None:
        """Close the connection (idempotent); results not yet received are discarded, and a
        :meth:`recv` waiting in another thread raises ClosedResourceError."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._sink.aclose(), timeout=_CLOSE_TIMEOUT_SECONDS)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        # Whatever still runs there (a recv of another thread, the client's own tasks) is
        # cancelled and given a chance to finish, so that no caller waits forever.
        async def cancel_the_rest() -> None:
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_the_rest(), self._loop).result(
                _CLOSE_TIMEOUT_SECONDS
            )
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CLOSE_TIMEOUT_SECONDS)
        self._loop.close()

    def __enter__(self) -> NatsSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
