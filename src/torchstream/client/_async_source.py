"""The asyncio :class:`AsyncSource`: the same sends as :class:`~torchstream.client.Source`,
as coroutines on a ``zmq.asyncio`` socket, over the same sans-IO core."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from types import TracebackType
from typing import Any, cast

from torchstream._errors import ClosedResourceError, MissingDependencyError, OverloadedError
from torchstream.client._requests import (
    Buffer,
    ImageFormat,
    Outgoing,
    RawFormat,
    Requests,
    SendResult,
)
from torchstream.client._sockets import (
    ASYNC_SOURCE_TYPES,
    SourceStatistics,
    cancelled_by_close,
    check_endpoint,
    check_timeout,
)
from torchstream.transport._endpoint import Endpoint, SocketOptions
from torchstream.transport._inbox import Inbox
from torchstream.transport._protocol import EndOfStreamAck, Limits

try:
    import zmq
    import zmq.asyncio
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("pyzmq", "transport") from exc

__all__ = ["AsyncSource"]

_OPTIONS = SocketOptions()

_AckKey = tuple[str, int | None]


class AsyncSource:
    """The asyncio flavour of :class:`~torchstream.client.Source`: same endpoints, same
    arguments, same checks and results; each send is a coroutine.

    Sends may run concurrently from many tasks: each gets its seq when called, and messages
    leave in the order the sends were called. A send waiting for room (the module not
    keeping up) raises :class:`~torchstream.OverloadedError` after ``send_timeout_seconds``
    with nothing sent; cancelling it sends nothing either. Concurrent :meth:`send_eos` calls
    for different sources each get their own acknowledgement. ``context`` defaults to
    ``zmq.asyncio.Context.instance()``; use the object from one event loop.
    """

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        options: SocketOptions = _OPTIONS,
        send_timeout_seconds: float | None = None,
        trace_sample_ratio: float = 1.0,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        check_timeout("send_timeout_seconds", send_timeout_seconds)
        parsed = check_endpoint(endpoint, ASYNC_SOURCE_TYPES, "AsyncSource")
        limits = Limits()  # what comes back is acknowledgements only
        if options.max_part_bytes is None:
            options = replace(options, max_part_bytes=limits.part_cap_bytes)
        ctx = zmq.asyncio.Context.instance() if context is None else context
        self._socket = cast(zmq.asyncio.Socket, parsed.open(ctx, options=options))
        self.endpoint = parsed.resolved(self._socket)
        if send_timeout_seconds is not None:
            self._socket.setsockopt(zmq.SNDTIMEO, round(send_timeout_seconds * 1000))
        self._timeout = send_timeout_seconds
        self._hwm = options.high_water_mark
        self._requests = Requests(trace_sample_ratio=trace_sample_ratio)
        self._inbox = Inbox(str(self.endpoint), limits=limits, routed=False, acks_wanted=True)
        self._acks: dict[_AckKey, list[asyncio.Future[EndOfStreamAck]]] = {}
        self._reading = asyncio.Lock()
        self._sent = 0
        self._ended = 0
        self.unexpected = 0
        """Messages that came back on dealer and were not an awaited acknowledgement."""
        self._closed = False

    async def send_image(
        self,
        source_id: str,
        data: Buffer,
        *,
        format: ImageFormat | None = None,
        pts_seconds: float | None = None,
        attributes: Mapping[str, Any] | None = None,
        traceparent: str | None = None,
    ) -> SendResult:
        """See :meth:`Source.send_image <torchstream.client.Source.send_image>`. ``data``
        must stay unchanged until the coroutine returns."""
        self._check_open()
        return await self._send(
            self._requests.image(
                source_id, data, format=format, pts_seconds=pts_seconds, attributes=attributes,
                traceparent=traceparent,
            )
        )

    async def send_frame(
        self,
        source_id: str,
        pixels: object,
        *,
        format: RawFormat = "rgb24",
        width: int | None = None,
        height: int | None = None,
        pts_seconds: float | None = None,
        attributes: Mapping[str, Any] | None = None,
        traceparent: str | None = None,
    ) -> SendResult:
        """See :meth:`Source.send_frame <torchstream.client.Source.send_frame>`."""
        self._check_open()
        return await self._send(
            self._requests.raw(
                source_id, pixels, format=format, width=width, height=height,
                pts_seconds=pts_seconds, attributes=attributes, traceparent=traceparent,
            )
        )

    async def send_packet(
        self,
        source_id: str,
        data: Buffer,
        *,
        codec: str,
        width: int,
        height: int,
        time_base: tuple[int, int],
        pts: int | None = None,
        dts: int | None = None,
        duration: int | None = None,
        keyframe: bool = False,
        extradata: bytes | None = None,
        pts_seconds: float | None = None,
        attributes: Mapping[str, Any] | None = None,
        traceparent: str | None = None,
    ) -> SendResult:
        """See :meth:`Source.send_packet <torchstream.client.Source.send_packet>`."""
        self._check_open()
        return await self._send(
            self._requests.packet(
                source_id, data, codec=codec, width=width, height=height, time_base=time_base,
                pts=pts, dts=dts, duration=duration, keyframe=keyframe, extradata=extradata,
                pts_seconds=pts_seconds, attributes=attributes, traceparent=traceparent,
            )
        )

    async def send_eos(
        self,
        source_id: str,
        *,
        ack_timeout_seconds: float | None = 10.0,
        traceparent: str | None = None,
    ) -> SendResult:
        """See :meth:`Source.send_eos <torchstream.client.Source.send_eos>`: on dealer, waits
        for the acknowledgement or raises ``TimeoutError``."""
        check_timeout("ack_timeout_seconds", ack_timeout_seconds)
        self._check_open()
        out = self._requests.end_of_stream(source_id, traceparent=traceparent)
        if self.endpoint.socket_type != "dealer":
            await self._send(out)
            self._ended += 1
            return out.sent
        # Waiting starts before sending, so that an acknowledgement read by another task's
        # send_eos in the meantime finds it.
        key = (source_id, out.sent.seq)
        waiter: asyncio.Future[EndOfStreamAck] = asyncio.get_running_loop().create_future()
        self._acks.setdefault(key, []).append(waiter)
        try:
            await self._send(out)
            await asyncio.wait_for(self._acknowledged(waiter), ack_timeout_seconds)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"{self.endpoint}: end-of-stream of {source_id!r} not acknowledged within "
                f"{ack_timeout_seconds} s"
            ) from None
        finally:
            waiters = self._acks.get(key, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._acks.pop(key, None)
        self._ended += 1
        return out.sent

    async def _acknowledged(self, waiter: asyncio.Future[EndOfStreamAck]) -> None:
        # One task at a time reads the socket and hands each acknowledgement to its waiter,
        # whichever task that is; the others wait for the lock or for their waiter.
        while not waiter.done():
            async with self._reading:
                if waiter.done():
                    return
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
                waiters = None
                if isinstance(message, EndOfStreamAck):
                    waiters = self._acks.get((message.source_id, message.last_seq))
                pending = [w for w in waiters or () if not w.done()]
                if pending and isinstance(message, EndOfStreamAck):
                    pending[0].set_result(message)
                else:
                    self.unexpected += 1

    async def _send(self, out: Outgoing) -> SendResult:
        try:
            await self._socket.send_multipart(out.parts, copy=False)
        except asyncio.CancelledError:
            if cancelled_by_close(self._closed):
                raise ClosedResourceError(f"{self.endpoint} was closed") from None
            raise
        except zmq.Again:
            raise OverloadedError(
                f"{self.endpoint}: no room to send within {self._timeout} s: the receiver is "
                f"not keeping up (high-water mark of {self._hwm} messages reached); nothing "
                "was sent"
            ) from None
        if not out.sent.end_of_stream:
            self._sent += 1
        return out.sent

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"{self.endpoint} is closed")

    def statistics(self) -> SourceStatistics:
        return SourceStatistics(str(self.endpoint), self._sent, self._ended)

    def close(self) -> None:
        """Close the socket (idempotent). Sends and acknowledgement waits still pending
        raise :class:`~torchstream.ClosedResourceError`, their messages unsent; queued
        messages get ``options.linger_seconds`` to go out."""
        if not self._closed:
            self._closed = True
            self._socket.close()

    async def __aenter__(self) -> AsyncSource:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
