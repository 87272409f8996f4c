"""The asyncio :class:`AsyncNatsSink`: the results of NATS workers (``torchstream worker``) as
the same :class:`~torchstream.client.Result` objects a ZeroMQ sink returns, deduplicated and
fenced as ``torchstream sink … --nats`` does (they share one sans-IO core,
:class:`~torchstream.nats._gate.ResultGate`)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Collection, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from torchstream._errors import ClosedResourceError
from torchstream.client._results import Result, Results
from torchstream.client._sockets import SinkStatistics, check_timeout

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg

    from torchstream.nats._gate import Admitted
    from torchstream.nats._layout import Layout
    from torchstream.nats._results import Start

__all__ = ["AsyncNatsSink"]


def _nats_layer() -> Any:
    """``torchstream.nats``, or MissingDependencyError naming ``torchstream[nats]``."""
    import torchstream.nats as nats_layer

    return nats_layer


class AsyncNatsSink:
    """Reads the results that NATS workers publish on ``<prefix>.out.<source_id>``, with
    asyncio: ``async with AsyncNatsSink("nats://host:4222") as sink: async for result in
    sink: …``. Needs ``pip install 'torchstream[nats]'``.

    ``servers``: one URL, a comma-separated list or a list (give every node of a cluster).
    ``source_ids`` keeps exactly those sources (ids that can travel over NATS: letters,
    digits, ``_`` and ``-``), ``prefix`` the sources whose id starts with it; others are
    counted as ``filtered``. ``layout`` names the subjects and the results stream (default
    :class:`~torchstream.nats.Layout`: ``ts.out.*``, ``TS_OUT``).

    ``start`` says where reading begins:

    - ``"live"`` (default): a plain subscription; results published from :meth:`open` on.
      Nothing is stored for this sink: what is published while its link is down is missed,
      and so is what it cannot keep up with (counted ``lost``).
    - ``"new"``: the results stream, from the results stored after :meth:`open`, in order,
      and nothing missed across reconnects or a slow reader (the server keeps results for
      the layout's ``results_max_age_seconds``).
    - ``"first"``: everything the results stream still holds, then what comes.
    - an ``int``: from that stream sequence on (``result.stream_seq + 1`` resumes after a
      result), or an aware ``datetime``: the results stored since then.

    Every result comes once: results of a worker whose claim of their partition was
    superseded (``fenced``) and copies at or below the last seq returned for their source
    (``duplicates``) are dropped and counted in :meth:`statistics`, as are malformed
    messages (``rejected``). Each :class:`~torchstream.client.Result` carries the trace id
    of the frame behind it and, read from the stream, its ``stream_seq``.

    :meth:`open` (``async with`` calls it; the first :meth:`recv` too) connects and
    subscribes, and raises :class:`~torchstream.nats.NatsUnavailableError` naming the URL
    when no server answers within ``connect_timeout_seconds``, or
    :class:`~torchstream.nats.LayoutError` when ``start`` needs a results stream the server
    does not have. Iteration ends after ``idle_timeout_seconds`` without a result (None:
    never by itself) or once the sink is closed. Up to ``max_buffered_results`` results wait
    here for the reader, then the client library's own buffer fills. Read it from one task
    at a time; :meth:`close` from another task ends that task's wait.
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
        nats_layer = _nats_layer()
        from torchstream.nats._gate import ResultGate
        from torchstream.nats._results import check_start

        check_timeout("idle_timeout_seconds", idle_timeout_seconds)
        if not (math.isfinite(connect_timeout_seconds) and connect_timeout_seconds > 0):
            raise ValueError(
                f"connect_timeout_seconds must be a number > 0, got {connect_timeout_seconds}"
            )
        if max_buffered_results < 1:
            raise ValueError(f"max_buffered_results must be >= 1, got {max_buffered_results}")
        check_start(start)
        self._results = Results(source_ids=source_ids, prefix=prefix)
        self._source_ids = None if source_ids is None else [
            nats_layer.check_source_id(sid) for sid in source_ids
        ]
        if isinstance(servers, str):
            servers = [url.strip() for url in servers.split(",") if url.strip()]
        if not servers:
            raise ValueError("servers must name at least one NATS URL")
        self._servers = list(servers)
        self.url = ",".join(self._servers)
        self.layout: Layout = nats_layer.Layout() if layout is None else layout
        self.start = start
        self.idle_timeout_seconds = idle_timeout_seconds
        self._connect_timeout_seconds = connect_timeout_seconds
        self._gate = ResultGate(wants=self._results.wants)
        self._queue: asyncio.Queue[Admitted | None] = asyncio.Queue(max_buffered_results)
        self._connection: NATS | None = None
        self._subscription: Any = None
        self._opening: asyncio.Lock | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed = False
        self._lost = 0

    async def open(self) -> AsyncNatsSink:
        """Connect and subscribe (once; idempotent). Results published before this returns
        are not read live: open the sink before what it waits for starts."""
        if self._closed:
            raise ClosedResourceError(f"the sink of {self.url} is closed")
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._connection is not None:
                return self
            from torchstream.nats._connection import close_quietly, connect
            from torchstream.nats._errors import LayoutError
            from torchstream.nats._results import subscribe_results

            connection = await connect(
                self._servers, name="torchstream-sink",
                connect_timeout_seconds=self._connect_timeout_seconds, on_error=self._on_error,
            )
            try:
                self._subscription = await subscribe_results(
                    connection, self.layout, self._on_message, source_ids=self._source_ids,
                    start=self.start,
                )
                await connection.flush()  # the server has the subscription: nothing missed
            except LayoutError as exc:
                await close_quietly(connection)
                raise LayoutError(f"{self.url}: {exc}") from None
            except BaseException:
                await close_quietly(connection)
                raise
            self._connection = connection
        return self

    async def _on_message(self, message: Msg) -> None:
        if self._closed:
            return
        from torchstream.nats._results import stream_seq_of

        stream_seq = None if self.start == "live" else stream_seq_of(message)
        admitted = self._gate.accept(
            message.subject, message.headers, message.data, stream_seq=stream_seq
        )
        if admitted is not None:
            await self._queue.put(admitted)  # full: the client's own buffer holds the rest

    def _on_error(self, error: Exception) -> None:
        import nats.errors

        if isinstance(error, nats.errors.SlowConsumerError) and self.start == "live":
            self._lost += 1  # the ordered consumer of a stream gets it again instead

    async def recv(self, timeout_seconds: float | None = None) -> Result:
        """The next result of a wanted source (opening the sink first if need be). Raises
        ``TimeoutError`` when none came within ``timeout_seconds`` (None: wait
        indefinitely), ClosedResourceError once closed."""
        check_timeout("timeout_seconds", timeout_seconds)
        if self._closed:
            raise ClosedResourceError(f"the sink of {self.url} is closed")
        await self.open()
        while True:
            if self._closed:  # by another task, while this one was handed results
                raise ClosedResourceError(f"the sink of {self.url} was closed")
            try:
                admitted = await asyncio.wait_for(self._queue.get(), timeout_seconds)
            except asyncio.TimeoutError:
                raise TimeoutError(f"{self.url}: no result within {timeout_seconds} s") from None
            if admitted is None:  # put there by close()
                raise ClosedResourceError(f"the sink of {self.url} was closed")
            result = self._results.accept(
                admitted.message, admitted.payload, stream_seq=admitted.stream_seq
            )
            if result is not None:
                return result

    def __aiter__(self) -> AsyncNatsSink:
        return self

    async def __anext__(self) -> Result:
        try:
            return await self.recv(self.idle_timeout_seconds)
        except (TimeoutError, ClosedResourceError):
            raise StopAsyncIteration from None

    def statistics(self) -> SinkStatistics:
        gate = self._gate.statistics()
        return SinkStatistics(
            endpoint=self.url,
            results=self._results.results,
            end_of_streams=self._results.end_of_streams,
            filtered=gate.filtered + self._results.filtered,
            unexpected=gate.unexpected + self._results.unexpected,
            rejected=gate.rejected,
            fenced=gate.fenced,
            duplicates=gate.duplicates,
            lost=self._lost,
        )

    def close(self) -> None:
        """Stop reading (idempotent): a waiting :meth:`recv` raises ClosedResourceError,
        results not yet received are discarded, and the connection closes in the
        background (``await aclose()`` to wait for it)."""
        if self._closed:
            return
        self._closed = True
        if self._queue.empty():  # a reader may wait: wake it (an empty queue has room)
            self._queue.put_nowait(None)
        if self._connection is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop runs here: the connection cannot be closed now
                return
            self._closing = loop.create_task(self._close_connection(self._connection))

    async def _close_connection(self, connection: NATS) -> None:
        from torchstream.nats._connection import close_quietly

        if self._subscription is not None:
            with contextlib.suppress(Exception):  # the consumer goes with the connection
                await self._subscription.unsubscribe()
        await close_quietly(connection)

    async def aclose(self) -> None:
        """:meth:`close`, and wait until the connection is closed."""
        self.close()
        if self._closing is not None:
            await self._closing

    async def __aenter__(self) -> AsyncNatsSink:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
