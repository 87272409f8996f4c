"""A blocking shell over :class:`Publisher` for the source adapters (``torchstream source …
--nats URL``), which read inputs on threads and send with ``Sender``'s methods."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from torchstream._errors import ClosedResourceError
from torchstream.nats._connection import close_quietly, connect
from torchstream.nats._layout import Layout
from torchstream.nats._publish import Publisher, PublisherStatistics
from torchstream.transport._channel import SenderStatistics
from torchstream.transport._protocol import EndOfStreamAck, FrameMessage

__all__ = ["NatsOutlet", "NatsSender"]

_T = TypeVar("_T")


class NatsOutlet:
    """One NATS connection and :class:`Publisher`, on an event loop in its own thread
    (``ts/nats/publish``), shared by the blocking senders of every source of a process.

    :meth:`open_sender` gives a :class:`NatsSender` for one source (the source adapters take
    the outlet where they take a ZeroMQ endpoint). :meth:`close` waits for the acks in
    flight, then closes the connection; idempotent. Raises
    :class:`~torchstream.nats.NatsUnavailableError` at construction when the server cannot be
    reached.
    """

    reliable = True
    """Each end of stream is answered (once JetStream stored it)."""

    def __init__(
        self,
        servers: str | list[str],
        layout: Layout,
        *,
        max_in_flight: int = 1024,
        ack_timeout_seconds: float = 5.0,
        connect_timeout_seconds: float = 5.0,
    ) -> None:
        self.url = servers if isinstance(servers, str) else ",".join(servers)
        self.layout = layout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ts/nats/publish", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._connection = self._run(connect(
                servers, name="torchstream-source",
                connect_timeout_seconds=connect_timeout_seconds,
            ))
        except BaseException:
            self._stop_loop()
            raise
        self.publisher = Publisher(
            self._connection, layout, max_in_flight=max_in_flight,
            ack_timeout_seconds=ack_timeout_seconds,
        )
        self._ack_timeout_seconds = ack_timeout_seconds

    def _run(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    def open_sender(self) -> NatsSender:
        """A sender for one source (a context manager, as ``Sender`` is)."""
        if self._closed:
            raise ClosedResourceError("the NATS outlet is closed")
        return NatsSender(self)

    def statistics(self) -> PublisherStatistics:
        return self.publisher.statistics()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self.publisher.close())
            self._run(close_quietly(self._connection), timeout=10)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> NatsOutlet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __str__(self) -> str:
        return f"nats {self.url}"


class NatsSender:
    """What a source adapter sends with: ``send`` and ``send_eos`` as on a ZeroMQ ``Sender``,
    blocking while the publisher's ack window is full."""

    def __init__(self, outlet: NatsOutlet) -> None:
        self._outlet = outlet
        self._sent = 0

    def send(self, message: FrameMessage, payload: bytes | memoryview | None = None) -> bool:
        """Publish one frame; True once handed to the connection (failed acks are counted
        in the outlet's statistics, not raised)."""
        self._outlet._run(self._outlet.publisher.publish(message, payload))
        self._sent += 1
        return True

    def send_eos(
        self, source_id: str, *, last_seq: int | None, traceparent: str | None = None,
        ack_timeout_seconds: float | None = 10.0,
    ) -> EndOfStreamAck | None:
        """Publish the end of stream and wait for JetStream to store it: the acknowledgement,
        or None if it was not stored."""
        stored = self._outlet._run(
            self._outlet.publisher.end(source_id, last_seq=last_seq), timeout=ack_timeout_seconds
        )
        self._sent += 1
        return EndOfStreamAck(source_id=source_id, last_seq=last_seq) if stored else None

    def statistics(self) -> SenderStatistics:
        errors = self._outlet.publisher.statistics().errors
        return SenderStatistics(
            endpoint=str(self._outlet), sent=self._sent, dropped=0, subscriptions=0,
            received=0, rejected=dict(errors),
        )

    def __enter__(self) -> NatsSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass
