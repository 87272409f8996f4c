""":class:`AsyncClient`: request/response over a pipeline module, what a web service calls."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from torchstream._errors import BrokenResourceError, ClosedResourceError
from torchstream.client._async_sink import AsyncSink
from torchstream.client._async_source import AsyncSource
from torchstream.client._matcher import AsyncMatcher, MatcherStatistics
from torchstream.client._requests import Buffer, ImageFormat
from torchstream.client._results import Result
from torchstream.transport._endpoint import Endpoint, SocketOptions

__all__ = ["AsyncClient"]

_OPTIONS = SocketOptions()


class AsyncClient:
    """Send an image, await its result: an :class:`AsyncSource`, an :class:`AsyncSink` and
    an :class:`AsyncMatcher` with a task reading results into it.

    ``async with AsyncClient("dealer+connect:tcp://module:5555",
    "sub+connect:tcp://module:5556") as client: result = await client.request("web", jpeg)``.
    Any number of requests may run concurrently; each fails with ``TimeoutError`` after
    ``timeout_seconds`` and :meth:`request` raises :class:`~torchstream.OverloadedError` at
    once while ``max_pending`` are waiting. Results of other clients on the same module are
    counted as unmatched in :meth:`statistics`. If reading results fails, every waiting and
    later request raises :class:`~torchstream.BrokenResourceError`.

    With a sub endpoint, results published before the subscription reached the module are
    lost (ZeroMQ's slow joiner): the first requests after connecting may time out.
    """

    def __init__(
        self,
        source_endpoint: Endpoint | str,
        sink_endpoint: Endpoint | str,
        *,
        timeout_seconds: float = 30.0,
        max_pending: int = 1024,
        options: SocketOptions = _OPTIONS,
        send_timeout_seconds: float | None = None,
        trace_sample_ratio: float = 1.0,
    ) -> None:
        self.matcher = AsyncMatcher(max_pending=max_pending, timeout_seconds=timeout_seconds)
        self.source = AsyncSource(
            source_endpoint, options=options, send_timeout_seconds=send_timeout_seconds,
            trace_sample_ratio=trace_sample_ratio,
        )
        try:
            self.sink = AsyncSink(sink_endpoint, options=options)
        except BaseException:
            self.source.close()
            raise
        self._reader: asyncio.Task[None] | None = None
        self._broken: BaseException | None = None
        self._closed = False

    async def request(
        self,
        source_id: str,
        data: Buffer,
        *,
        format: ImageFormat | None = None,
        attributes: Mapping[str, Any] | None = None,
        traceparent: str | None = None,
    ) -> Result:
        """Send a JPEG or PNG as the next frame of ``source_id`` and return its result."""
        if self._closed:
            raise ClosedResourceError("the client is closed")
        if self._reader is None:
            raise RuntimeError("use the client as `async with AsyncClient(...) as client`")
        if self._broken is not None:
            raise BrokenResourceError("reading results failed") from self._broken
        # Expect the result before sending, so that it cannot arrive unexpected.
        out = self.source._requests.image(
            source_id, data, format=format, attributes=attributes, traceparent=traceparent
        )
        future = self.matcher.expect(out.sent)
        try:
            await self.source._send(out)
        except BaseException:
            future.cancel()
            raise
        return await future

    async def _read(self) -> None:
        try:
            async for result in self.sink:
                self.matcher.deliver(result)
        except Exception as exc:  # handed to every waiting and later request
            self._broken = exc
            error = BrokenResourceError(f"{self.sink.endpoint}: reading results failed: {exc}")
            error.__cause__ = exc
            self.matcher.close(error)

    def statistics(self) -> MatcherStatistics:
        return self.matcher.statistics()

    async def aclose(self) -> None:
        """Stop reading results, fail waiting requests with ClosedResourceError, close the
        sockets (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait({self._reader})  # unlike awaiting it, keeps our own cancellation
        self.matcher.close()
        self.source.close()
        self.sink.close()

    async def __aenter__(self) -> AsyncClient:
        if self._closed:
            raise ClosedResourceError("the client is closed")
        self._reader = asyncio.create_task(self._read(), name=f"ts/client/{self.sink.endpoint}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
