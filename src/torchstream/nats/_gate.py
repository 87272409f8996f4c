"""What a sink does with each message read from ``<prefix>.out.*``, sans-IO: decode it, keep
the sources wanted, and let each result through once and never from a fenced worker.

Shared by :class:`~torchstream.client.NatsSink`, :class:`~torchstream.client.AsyncNatsSink`
and ``torchstream sink … --nats`` (which reads through ``NatsSink``), so that they all drop
and count exactly the same messages.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torchstream._errors import ProtocolError
from torchstream.nats._fence import Fence
from torchstream.nats._tickets import EPOCH_HEADER, PARTITION_HEADER, WORKER_HEADER
from torchstream.nats._wire import decode
from torchstream.transport._protocol import EndOfStream, Limits, ResultMessage

__all__ = ["Admitted", "GateStatistics", "ResultGate"]

log = logging.getLogger(__name__)

_LIMITS = Limits()


@dataclass(frozen=True)
class Admitted:
    """A result or end of stream to hand to the application, with ``payload`` a view of the
    message's payload bytes (None: none) and ``stream_seq`` its sequence in the results
    stream (None when read from a plain subscription)."""

    message: ResultMessage | EndOfStream
    payload: memoryview | None
    stream_seq: int | None = None


@dataclass(frozen=True)
class GateStatistics:
    filtered: int
    """Messages of sources not wanted."""
    unexpected: int
    """Valid messages that are not results (a frame published on a result subject)."""
    rejected: dict[str, int]
    """Malformed messages, by :data:`~torchstream.transport.RejectReason`."""
    fenced: int
    """Results of a worker whose claim of their partition was superseded (an older epoch)."""
    duplicates: int
    """Results at or below the last seq let through for their source, and repeated ends of
    stream."""


class ResultGate:
    """Decides about each message read from the results subjects, in the order read.

    :meth:`accept` returns an :class:`Admitted` or None, and counts why not: malformed
    (``rejected``, by reason), not a result (``unexpected``), a source ``wants`` refuses
    (``filtered``; checked first, so other sources never change what is let through),
    ``fenced`` or ``duplicate`` (see :class:`~torchstream.nats._fence.Fence`: a result carrying
    the worker headers ``Ts-Worker``, ``Ts-Partition``, ``Ts-Epoch`` is checked against the
    newest claim seen for its partition and the last seq let through for its source; one
    without them, published by something else than a worker, is let through unchecked).

    A source's end of stream ends its session: the next result of that id may start again
    at seq 0. The same end of stream read twice (a worker that took a partition over may
    publish it again) counts as a duplicate.
    """

    def __init__(
        self, *, wants: Callable[[str], bool] | None = None, limits: Limits = _LIMITS
    ) -> None:
        self._wants = wants
        self._limits = limits
        self._fence = Fence()
        self._ended: dict[str, int | None] = {}
        self._eos_duplicates = 0
        self._filtered = 0
        self._unexpected = 0
        self._rejected: collections.Counter[str] = collections.Counter()

    def accept(
        self,
        subject: str,
        headers: Mapping[str, str] | None,
        body: bytes | memoryview,
        *,
        stream_seq: int | None = None,
    ) -> Admitted | None:
        """The message to hand over, or None when it is dropped (counted)."""
        headers = headers or {}
        try:
            decoded = decode(subject, dict(headers), body, limits=self._limits)
        except ProtocolError as exc:
            self._rejected[exc.reason] += 1
            log.debug("sink: rejected a message on %s: %s", subject, exc)
            return None
        message = decoded.message
        if not isinstance(message, (ResultMessage, EndOfStream)):
            self._unexpected += 1
            return None
        source_id = message.source_id
        if self._wants is not None and not self._wants(source_id):
            self._filtered += 1
            return None
        if isinstance(message, EndOfStream):
            if source_id in self._ended and self._ended[source_id] == message.last_seq:
                self._eos_duplicates += 1
                return None
            self._ended[source_id] = message.last_seq
            self._fence.forget_source(source_id)
            return Admitted(message, None, stream_seq)
        if WORKER_HEADER in headers:
            try:
                partition = int(headers[PARTITION_HEADER])
                epoch = int(headers[EPOCH_HEADER])
            except (KeyError, ValueError):
                self._rejected["bad_header"] += 1
                log.debug("sink: bad claim headers on %s: %s", subject, dict(headers))
                return None
            verdict = self._fence.check(
                partition=partition, epoch=epoch, worker_id=headers[WORKER_HEADER],
                source_id=source_id, seq=message.seq,
            )
            if verdict is not None:
                return None
        self._ended.pop(source_id, None)
        return Admitted(message, decoded.payload, stream_seq)

    def statistics(self) -> GateStatistics:
        fence = self._fence.statistics()
        return GateStatistics(
            filtered=self._filtered,
            unexpected=self._unexpected,
            rejected=dict(self._rejected),
            fenced=fence.fenced,
            duplicates=fence.duplicates + self._eos_duplicates,
        )
