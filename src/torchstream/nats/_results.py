"""The sink side: results read from ``<prefix>.out.*`` and handed to the sink adapters'
writers, each (source, seq) once and never a fenced worker's (see
:class:`~torchstream.nats._fence.Fence`)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torchstream._errors import ProtocolError
from torchstream.nats._connection import close_quietly, connect
from torchstream.nats._fence import Fence
from torchstream.nats._layout import Layout
from torchstream.nats._tickets import EPOCH_HEADER, PARTITION_HEADER, WORKER_HEADER
from torchstream.nats._wire import decode
from torchstream.transport._adapters import ResultWriter
from torchstream.transport._protocol import EndOfStream, ResultMessage

__all__ = ["NatsReceiveReport", "receive_nats_results"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NatsReceiveReport:
    results: int
    sources_ended: int
    errors: int
    fenced: int
    """Results dropped: from a worker whose claim was superseded."""
    duplicates: int
    """Results dropped: at or below the last seq written for their source."""


def receive_nats_results(
    servers: str | list[str],
    layout: Layout,
    writers: Sequence[ResultWriter],
    *,
    exit_after_sources: int | None = None,
    idle_timeout_seconds: float | None = None,
    stop: threading.Event | None = None,
) -> NatsReceiveReport:
    """Hand every result published on ``<prefix>.out.*`` to ``writers`` until ``stop``,
    until ``exit_after_sources`` ends of stream, or ``idle_timeout_seconds`` without a
    message. Results live as they come (plain subscription: what was published before the
    call is not read). Blocking; closes the writers at the end."""
    stop = stop or threading.Event()
    fence = Fence()
    counts = {"results": 0, "ended": 0, "errors": 0}
    last = [time.monotonic()]

    def hand_over(message: ResultMessage | EndOfStream, content: memoryview | None) -> None:
        for writer in writers:
            try:
                if isinstance(message, ResultMessage):
                    writer.write(message, content)
                else:
                    writer.end(message.source_id)
            except Exception as exc:
                counts["errors"] += 1
                log.warning("sink: %r failed on %r: %s", writer, message, exc)

    async def main() -> None:
        connection = await connect(servers, name="torchstream-sink")

        async def on_message(raw: Any) -> None:
            last[0] = time.monotonic()
            headers = raw.headers or {}
            try:
                decoded = decode(raw.subject, headers, raw.data)
            except ProtocolError as exc:
                counts["errors"] += 1
                log.warning("sink: rejected a message on %s: %s", raw.subject, exc)
                return
            message = decoded.message
            if isinstance(message, EndOfStream):
                counts["ended"] += 1
                hand_over(message, None)
                return
            if not isinstance(message, ResultMessage):
                return
            if WORKER_HEADER in headers:
                verdict = fence.check(
                    partition=int(headers[PARTITION_HEADER]), epoch=int(headers[EPOCH_HEADER]),
                    worker_id=headers[WORKER_HEADER], source_id=message.source_id,
                    seq=message.seq,
                )
                if verdict is not None:
                    return
            counts["results"] += 1
            hand_over(message, decoded.payload)

        try:
            await connection.subscribe(f"{layout.prefix}.out.*", cb=on_message)
            while not stop.is_set():
                await asyncio.sleep(0.1)
                if exit_after_sources is not None and counts["ended"] >= exit_after_sources:
                    break
                if idle_timeout_seconds is not None and (
                    time.monotonic() - last[0] > idle_timeout_seconds
                ):
                    break
        finally:
            await close_quietly(connection)

    try:
        asyncio.run(main())
    finally:
        for writer in writers:
            try:
                writer.close()
            except Exception as exc:
                counts["errors"] += 1
                log.warning("sink: %r failed to close: %s", writer, exc)
    stats = fence.statistics()
    return NatsReceiveReport(counts["results"], counts["ended"], counts["errors"],
                             stats.fenced, stats.duplicates)
