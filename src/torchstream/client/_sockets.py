"""What the blocking and asyncio socket shells of the client share: the endpoints each end
takes, argument checks, statistics, and telling a close from a cancellation."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from torchstream.transport._endpoint import Endpoint

__all__ = [
    "ASYNC_SOURCE_TYPES",
    "SINK_TYPES",
    "SOURCE_TYPES",
    "Acknowledgements",
    "SinkStatistics",
    "SourceStatistics",
    "cancelled_by_close",
    "check_endpoint",
    "check_timeout",
]


@dataclass(frozen=True)
class SourceStatistics:
    endpoint: str
    sent: int
    """Frames sent (images, raw pictures and packets)."""
    end_of_streams: int


@dataclass(frozen=True)
class SinkStatistics:
    endpoint: str
    results: int
    """Frame results returned."""
    end_of_streams: int
    filtered: int
    """Messages of sources the sink does not want (on sub, most never reach it)."""
    unexpected: int
    """Valid messages that are not results (frames, acknowledgements), skipped."""
    rejected: dict[str, int]
    """Malformed messages dropped, by :data:`~torchstream.transport.RejectReason`."""
    fenced: int = 0
    """NATS sinks: results dropped because a newer claim (epoch) of their partition was seen:
    a worker that lost its partitions without knowing it."""
    duplicates: int = 0
    """NATS sinks: results at or below the last seq returned for their source (a copy, or a
    stale owner's result that raced behind the new owner's), and repeated ends of stream."""
    lost: int = 0
    """NATS sinks reading live (``start="live"``): results the server sent that this sink
    dropped because it had too many unread ones (read faster, or read the results stream)."""



SOURCE_TYPES = ("dealer", "req", "push")
"""Socket types a source sends on: to a module's router (acknowledged end-of-stream), rep
(every message answered) or pull."""
ASYNC_SOURCE_TYPES = ("dealer", "push")
"""The asyncio source sends many messages at once; req carries one at a time."""
SINK_TYPES = ("sub", "pull", "router")
"""Socket types a sink receives on: from a module's pub or push, or (router, bound) from a
module connected with dealer, on an acknowledged link."""

_SEEN_MEMORY = 65536


class Acknowledgements:
    """The receiving half of an acknowledged result link (router sinks): which results were
    already delivered, so that a copy the module sends again is acknowledged, not repeated."""

    def __init__(self) -> None:
        self._seen: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()

    def first_time(self, source_id: str, seq: int) -> bool:
        key = (source_id, seq)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > _SEEN_MEMORY:
            self._seen.popitem(last=False)
        return True


def check_timeout(name: str, seconds: float | None) -> None:
    """ValueError unless ``seconds`` is None or a number >= 0."""
    if seconds is not None and not seconds >= 0:
        raise ValueError(f"{name} must be >= 0 or None, got {seconds}")


def cancelled_by_close(closed: bool) -> bool:
    """Whether a CancelledError just caught came from closing the socket (pyzmq cancels the
    pending futures of a socket it closes) rather than from cancelling the current task."""
    if not closed:
        return False
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return cancelling is None or cancelling() == 0


def check_endpoint(endpoint: Endpoint | str, allowed: tuple[str, ...], role: str) -> Endpoint:
    """``endpoint`` parsed, or ValueError when ``role`` cannot use its socket type."""
    parsed = Endpoint.parse(endpoint) if isinstance(endpoint, str) else endpoint
    if parsed.socket_type not in allowed:
        raise ValueError(f"a {role} needs a {' or '.join(allowed)} endpoint, got {parsed}")
    return parsed

