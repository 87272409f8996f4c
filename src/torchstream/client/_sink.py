"""The blocking :class:`Sink`: the receiving half of the client over a transport
:class:`~torchstream.transport.Receiver`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Iterator
from types import TracebackType
from typing import Any

from torchstream._errors import BrokenResourceError, MissingDependencyError, OverloadedError
from torchstream.client._results import Result, Results
from torchstream.client._sockets import (
    SINK_TYPES,
    Acknowledgements,
    SinkStatistics,
    check_endpoint,
    check_timeout,
)
from torchstream.transport._channel import Receiver
from torchstream.transport._endpoint import Endpoint, SocketOptions
from torchstream.transport._protocol import Limits, ResultAck, ResultMessage

try:
    import zmq
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("pyzmq", "transport") from exc

__all__ = ["Sink"]

_OPTIONS = SocketOptions()
_LIMITS = Limits()


class Sink:
    """Receives what a pipeline module sends back: frame results and end-of-stream markers.

    ``endpoint`` is a ``sub`` endpoint for a module publishing on pub (every sink gets every
    result it subscribes to; a slow sink loses results, which the module counts) or a
    ``pull`` endpoint for a module pushing (each result goes to one sink; a slow sink slows
    the module down), or a ``router+bind`` endpoint for a module that connects to it with
    ``--out dealer+connect:…`` (an acknowledged link: each result is acknowledged when this
    sink returns it, the module re-sends what a killed sink never returned, and copies are
    dropped here). ``source_ids`` keeps exactly those sources, ``prefix`` the sources
    whose id starts with it (on sub the module filters before sending).

    Iterate it (``for result in sink``) for each :class:`Result` in order of arrival,
    end-of-streams included; iteration ends after ``idle_timeout_seconds`` without a result
    (None: it never ends by itself) or once the sink is closed, and may be started again.
    :meth:`recv` returns one result or raises ``TimeoutError``. Malformed messages are
    counted and skipped, never raised. Use a sink from one thread at a time.
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
        context: zmq.Context[Any] | None = None,
    ) -> None:
        check_timeout("idle_timeout_seconds", idle_timeout_seconds)
        parsed = check_endpoint(endpoint, SINK_TYPES, "Sink")
        self._results = Results(source_ids=source_ids, prefix=prefix)
        self._receiver = Receiver(
            parsed, context=context, options=options, limits=limits,
            subscribe=self._results.subscriptions if parsed.socket_type == "sub" else None,
        )
        self.endpoint = self._receiver.endpoint
        self.idle_timeout_seconds = idle_timeout_seconds
        self._closed = False
        self._acks = Acknowledgements() if parsed.socket_type == "router" else None

    def recv(self, timeout_seconds: float | None = None) -> Result:
        """The next result of a wanted source. Raises ``TimeoutError`` when none came within
        ``timeout_seconds`` (None: wait indefinitely), ClosedResourceError once closed."""
        check_timeout("timeout_seconds", timeout_seconds)
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message, payload = self._receiver.recv(remaining)
            except TimeoutError:
                raise TimeoutError(
                    f"{self.endpoint}: no result within {timeout_seconds} s"
                ) from None
            if self._acks is not None and isinstance(message, ResultMessage):
                # A lost acknowledgement only means the module sends the result again.
                with contextlib.suppress(BrokenResourceError, OverloadedError):
                    self._receiver.reply(ResultAck(source_id=message.source_id, seq=message.seq))
                if not self._acks.first_time(message.source_id, message.seq):
                    continue  # sent again by the module: already returned
            result = self._results.accept(message, payload)
            if result is not None:
                return result

    def __iter__(self) -> Iterator[Result]:
        while not self._closed:
            try:
                yield self.recv(self.idle_timeout_seconds)
            except TimeoutError:
                return

    def statistics(self) -> SinkStatistics:
        stats = self._receiver.statistics()
        return SinkStatistics(
            endpoint=str(self.endpoint),
            results=self._results.results,
            end_of_streams=self._results.end_of_streams,
            filtered=self._results.filtered,
            unexpected=self._results.unexpected,
            rejected=stats.rejected,
        )

    def close(self) -> None:
        """Close the socket (idempotent); results not yet received are discarded."""
        self._closed = True
        self._receiver.close()

    def __enter__(self) -> Sink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
