"""The asyncio :class:`AsyncSink`: the same results as :class:`~torchstream.client.Sink`, as an
async iterator on a ``zmq.asyncio`` socket, over the same sans-IO core."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from dataclasses import replace
from types import TracebackType
from typing import cast

from torchstream._errors import ClosedResourceError, MissingDependencyError
from torchstream.client._results import Result, Results
from torchstream.client._sockets import (
    SINK_TYPES,
    Acknowledgements,
    SinkStatistics,
    cancelled_by_close,
    check_endpoint,
    check_timeout,
)
from torchstream.transport._endpoint import Endpoint, SocketOptions
from torchstream.transport._inbox import Inbox
from torchstream.transport._protocol import Limits, ResultAck, ResultMessage, encode

try:
    import zmq
    import zmq.asyncio
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("pyzmq", "transport") from exc

__all__ = ["AsyncSink"]

_OPTIONS = SocketOptions()
_LIMITS = Limits()


class AsyncSink:
    """The asyncio flavour of :class:`~torchstream.client.Sink`: same endpoints, filters and
    results. ``async for result in sink`` ends after ``idle_timeout_seconds`` without a
    result (None: never by itself) or once the sink is closed; ``await sink.recv(timeout)``
    returns one result or raises ``TimeoutError``.

    Read it from one task at a time. Closing it from another task ends that task's
    iteration (a waiting :meth:`recv` raises :class:`~torchstream.ClosedResourceError`).
    ``context`` defaults to ``zmq.asyncio.Context.instance()``.
    """

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        source_ids: Collection[str] | None = None,
        prefix: str | None = None,
        idle_timeout_seconds: float | None = None,
        options: SocketOptions = _OPTIONS,
        limits: Limits = _LIMITS,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        check_timeout("idle_timeout_seconds", idle_timeout_seconds)
        parsed = check_endpoint(endpoint, SINK_TYPES, "AsyncSink")
        self._results = Results(source_ids=source_ids, prefix=prefix)
        if options.max_part_bytes is None:
            options = replace(options, max_part_bytes=limits.part_cap_bytes)
        ctx = zmq.asyncio.Context.instance() if context is None else context
        self._socket = cast(zmq.asyncio.Socket, parsed.open(ctx, options=options))
        self.endpoint = parsed.resolved(self._socket)
        if parsed.socket_type == "sub":
            for prefix_ in self._results.subscriptions:
                self._socket.setsockopt(zmq.SUBSCRIBE, prefix_.encode())
        routed = parsed.socket_type == "router"
        self._inbox = Inbox(str(self.endpoint), limits=limits, routed=routed, ack_eos=routed)
        self._acks = Acknowledgements() if routed else None
        self.idle_timeout_seconds = idle_timeout_seconds
        self._closed = False

    async def recv(self, timeout_seconds: float | None = None) -> Result:
        """The next result of a wanted source. Raises ``TimeoutError`` when none came within
        ``timeout_seconds`` (None: wait indefinitely), ClosedResourceError once closed."""
        check_timeout("timeout_seconds", timeout_seconds)
        if self._closed:
            raise ClosedResourceError(f"{self.endpoint} is closed")
        try:
            return await asyncio.wait_for(self._next(), timeout_seconds)
        except asyncio.TimeoutError:
            raise TimeoutError(f"{self.endpoint}: no result within {timeout_seconds} s") from None

    async def _next(self) -> Result:
        while True:
            try:
                frames = await self._socket.recv_multipart(copy=False)
            except asyncio.CancelledError:
                if cancelled_by_close(self._closed):
                    raise ClosedResourceError(f"{self.endpoint} was closed") from None
                raise
            delivery = self._inbox.accept([frame.buffer for frame in frames])
            if delivery is None:  # malformed: counted and logged by the inbox
                continue
            message = delivery.message
            if delivery.ack is not None:  # an end of stream on an acknowledged link
                await self._reply(delivery.ack)
            if self._acks is not None and isinstance(message, ResultMessage):
                assert delivery.peer is not None
                ack = ResultAck(source_id=message.source_id, seq=message.seq)
                await self._reply([delivery.peer, *encode(ack)])
                if not self._acks.first_time(message.source_id, message.seq):
                    continue  # sent again by the module: already returned
            result = self._results.accept(delivery.message, delivery.payload)
            if result is not None:
                return result

    async def _reply(self, parts: list[bytes | memoryview]) -> None:
        # The module went away or is full: it sends unacknowledged results again.
        with contextlib.suppress(zmq.ZMQError):
            await self._socket.send_multipart(parts, flags=zmq.NOBLOCK)

    def __aiter__(self) -> AsyncSink:
        return self

    async def __anext__(self) -> Result:
        try:
            return await self.recv(self.idle_timeout_seconds)
        except (TimeoutError, ClosedResourceError):
            raise StopAsyncIteration from None

    def statistics(self) -> SinkStatistics:
        return SinkStatistics(
            endpoint=str(self.endpoint),
            results=self._results.results,
            end_of_streams=self._results.end_of_streams,
            filtered=self._results.filtered,
            unexpected=self._results.unexpected,
            rejected=self._inbox.rejects.snapshot(),
        )

    def close(self) -> None:
        """Close the socket (idempotent); results not yet received are discarded."""
        if not self._closed:
            self._closed = True
            self._socket.close()

    async def __aenter__(self) -> AsyncSink:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
