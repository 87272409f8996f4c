"""What the source and sink adapters count and trace, read by their metrics endpoint.

Pulled, not pushed: an adapter updates plain counters as it goes; ``statistics()`` returns a
frozen snapshot from any thread. The hooks of :class:`AdapterTracer` let
``torchstream.telemetry`` trace the adapters without the transport importing OpenTelemetry.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from torchstream.transport._channel import Receiver, ReceiverStatistics, Sender, SenderStatistics
from torchstream.transport._protocol import ResultMessage

__all__ = [
    "AdapterTracer",
    "ReceiveMonitor",
    "SendMonitor",
    "SinkAdapterStatistics",
    "SourceAdapterStatistics",
]


@runtime_checkable
class AdapterTracer(Protocol):
    """Traces what an adapter sends or writes.

    ``sending(source_id, seq)`` wraps one frame message's send and yields the W3C
    ``traceparent`` to put in its header (None: send none); ``writing(result)`` wraps the
    writers' work on one received result, continuing ``result.traceparent``.
    """

    def sending(self, source_id: str, seq: int) -> AbstractContextManager[str | None]: ...

    def writing(self, result: ResultMessage) -> AbstractContextManager[None]: ...


@dataclass(frozen=True)
class SourceAdapterStatistics:
    senders: Mapping[str, SenderStatistics]
    """Each source's sender, by source id: messages sent (frames and its end of stream),
    dropped (pub only), answers received (req receipts, end-of-stream acks)."""
    sending: frozenset[str]
    """Sources still sending."""
    failed: Mapping[str, int] = field(default_factory=dict)
    """Sources that stopped on an error, by source id (1 each; a looping source may fail once
    per run)."""


class SendMonitor:
    """Follows the senders of a source adapter (``send_video`` / ``send_images`` with
    ``monitor=``), one per source, while they run and after they close."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, Sender] = {}
        self._done: dict[str, SenderStatistics] = {}
        self._failed: dict[str, int] = {}

    def started(self, source_id: str, sender: Sender) -> None:
        with self._lock:
            self._live[source_id] = sender

    def finished(self, source_id: str, sender: Sender, *, failed: bool) -> None:
        with self._lock:
            if self._live.get(source_id) is sender:
                del self._live[source_id]
            self._done[source_id] = sender.statistics()
            if failed:
                self._failed[source_id] = self._failed.get(source_id, 0) + 1

    def statistics(self) -> SourceAdapterStatistics:
        with self._lock:
            senders = dict(self._done)
            senders.update((sid, s.statistics()) for sid, s in self._live.items())
            return SourceAdapterStatistics(senders, frozenset(self._live), dict(self._failed))


@dataclass(frozen=True)
class SinkAdapterStatistics:
    receiver: ReceiverStatistics | None
    """The receiving socket's counts (messages received, rejected by reason), None before it
    is open."""
    results: Mapping[str, int]
    """Results handed to the writers, by source id."""
    duplicates: int
    """Results received again (re-sent by a module that missed their acknowledgement) and
    dropped, not written twice."""
    write_errors: int
    """Times a writer failed on a result, an end of stream or closing."""
    sources_ended: int
    acks_sent: int
    """Result acknowledgements sent back (router endpoints)."""
    acks_failed: int
    """Result acknowledgements that could not go out (the module gone or full)."""


class ReceiveMonitor:
    """Follows a sink adapter's ``receive_results`` (``monitor=``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._receiver: Receiver | None = None
        self.results: dict[str, int] = {}
        self.duplicates = self.write_errors = self.sources_ended = 0
        self.acks_sent = self.acks_failed = 0

    def opened(self, receiver: Receiver) -> None:
        self._receiver = receiver

    @property
    def receiving(self) -> bool:
        """Whether the socket is open (a sink adapter is ready)."""
        return self._receiver is not None

    def result(self, source_id: str) -> None:
        with self._lock:  # a new key resizes the dict under a scraping reader
            self.results[source_id] = self.results.get(source_id, 0) + 1

    def statistics(self) -> SinkAdapterStatistics:
        receiver = self._receiver
        with self._lock:
            results = dict(self.results)
        return SinkAdapterStatistics(
            receiver=receiver.statistics() if receiver is not None else None,
            results=results,
            duplicates=self.duplicates,
            write_errors=self.write_errors,
            sources_ended=self.sources_ended,
            acks_sent=self.acks_sent,
            acks_failed=self.acks_failed,
        )
