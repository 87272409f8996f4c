"""What the worker remembers of each frame it feeds into its pipeline (a :class:`Ticket`),
and how finished frames come back to it in seq order (:class:`Reorder`, sans-IO; and
:class:`ResultSink`, the pipeline sink that encodes results on the sink's thread).

A delivered message is acknowledged only once its frame's result is published (or its drop
counted), so ``max_ack_pending`` bounds the frames of a partition inside the worker. Frames
leave a decoder in presentation order, which is not the packets' order when a video has
B-frames; results must still leave in seq order (the sinks check that seqs increase), so
each source's tickets wait in a :class:`Reorder` queue until every earlier one is settled.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from nats.aio.msg import Msg

from torchstream._draw import AnnotationStyle, annotate
from torchstream.frame import Frame
from torchstream.nats._wire import Encoded, encode
from torchstream.pipeline._session import Session
from torchstream.sinks._images import encode_picture
from torchstream.transport._protocol import ImagePayload, ResultMessage

__all__ = [
    "EPOCH_HEADER",
    "PARTITION_HEADER",
    "WORKER_HEADER",
    "Reorder",
    "ResultSink",
    "Ticket",
]

WORKER_HEADER = "Ts-Worker"
PARTITION_HEADER = "Ts-Partition"
EPOCH_HEADER = "Ts-Epoch"

_MAX_OVERTAKEN = 32
"""Settled tickets allowed behind an unsettled one before it counts as lost in the decoder
(a packet that never became a picture). B-frames reorder by a few frames only."""


@dataclass(eq=False)
class Ticket:
    """One frame (or end of stream) of a source in the worker: where it came from, under
    which claim, and what became of it.

    ``message`` is the delivered JetStream message to acknowledge (None for a frame read
    straight from the stream in a replay). ``decode_only`` frames rebuild the decoder's
    state and yield no result. ``state`` goes from ``pending`` to ``result`` (``encoded``
    holds the NATS message to publish) or ``dropped`` (``reason`` says why)."""

    source_id: str
    seq: int
    partition: int
    epoch: int
    message: Msg | None = None
    decode_only: bool = False
    end_of_stream: bool = False
    state: Literal["pending", "result", "dropped"] = "pending"
    encoded: Encoded | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    stale_at: float | None = None
    """``time.monotonic()`` past which the frame is older than the worker's
    ``max_frame_age_seconds`` (since it entered the stream): dropped as ``late`` if its
    first stage has not run by then."""


class Reorder:
    """The unsettled tickets of one source, in the order they were pushed (seq order).

    :meth:`add` a ticket when its frame is pushed, :meth:`settle` it when its frame comes
    out (or is dropped); :meth:`ready` returns the settled tickets at the head, which may
    leave now. A ticket overtaken by more than ``max_overtaken`` settled ones (its packet
    gave no picture) is settled as dropped ``decode_error`` then."""

    def __init__(self, *, max_overtaken: int = _MAX_OVERTAKEN) -> None:
        self._tickets: collections.OrderedDict[int, Ticket] = collections.OrderedDict()
        self._max_overtaken = max_overtaken
        self._settled_behind = 0

    def __len__(self) -> int:
        return len(self._tickets)

    def add(self, ticket: Ticket) -> None:
        self._tickets[id(ticket)] = ticket

    def settle(self, ticket: Ticket) -> None:
        if id(ticket) in self._tickets and ticket.state != "pending":
            self._settled_behind += 1

    def ready(self) -> list[Ticket]:
        out: list[Ticket] = []
        while self._tickets:
            head = next(iter(self._tickets.values()))
            if head.state == "pending":
                if self._settled_behind <= self._max_overtaken:
                    break
                head.state, head.reason = "dropped", "decode_error"
            else:
                self._settled_behind -= 1
            del self._tickets[id(head)]
            out.append(head)
        return out

    def drain(self, reason: str) -> list[Ticket]:
        """Every ticket, in order; the unsettled ones settled as dropped for ``reason``."""
        out = list(self._tickets.values())
        self._tickets.clear()
        self._settled_behind = 0
        for ticket in out:
            if ticket.state == "pending":
                ticket.state, ticket.reason = "dropped", reason
        return out


class ResultSink:
    """The pipeline sink of a worker: turns each finished frame into the NATS message of its
    result (``ResultMessage`` framed by :func:`torchstream.nats.encode`, with the worker,
    partition and claim epoch in the headers), on the sink's thread, and hands its ticket
    to ``settled`` (which must be thread-safe: the worker posts it to its event loop).

    ``content``: ``none`` (metadata only) or ``image`` (the frame annotated with ``style``,
    as a JPEG: costly, on this thread). Frames without a ticket, and decode-only frames,
    are ignored."""

    def __init__(
        self,
        subject_of: Callable[[str], str],
        worker_id: str,
        settled: Callable[[Ticket], None],
        *,
        content: Literal["none", "image"] = "none",
        style: AnnotationStyle | None = None,
        name: str = "nats-results",
    ) -> None:
        if content not in ("none", "image"):
            raise ValueError(f"content must be 'none' or 'image', got {content!r}")
        self.name = name
        self._subject_of = subject_of
        self._worker_id = worker_id
        self._settled = settled
        self._content = content
        self._style = style or AnnotationStyle()

    def write(self, frame: Frame) -> None:
        ticket = frame.__dict__.get("_original")
        if not isinstance(ticket, Ticket) or ticket.decode_only:
            return
        payload: bytes | None = None
        description = None
        if self._content == "image" and frame.surface is not None:
            payload = encode_picture(annotate(frame, self._style), "jpg")
            description = ImagePayload(format="jpeg")
        message = ResultMessage(
            frame=frame,
            content="image" if payload is not None else "none",
            payload=description,
            traceparent=frame.__dict__.get("_traceparent"),
        )
        ticket.encoded = with_claim(
            encode(self._subject_of(frame.source_id), message, payload),
            self._worker_id,
            ticket.partition,
            ticket.epoch,
        )
        ticket.state = "result"
        self._settled(ticket)

    def dropped(self, frame: Frame, reason: str) -> None:
        """The pipeline's ``on_drop``: a frame that will not reach the sinks."""
        ticket = frame.__dict__.get("_original")
        if not isinstance(ticket, Ticket) or ticket.decode_only:
            return
        # A deadline in a worker is the frame's age limit (the ticket's stale_at): ``late``,
        # as the frames dropped on arrival for the same reason.
        reason = "late" if reason == "deadline" else f"pipeline_{reason}"
        ticket.state, ticket.reason = "dropped", reason
        self._settled(ticket)

    def end_session(self, session: Session) -> None:
        pass

    def close(self) -> None:
        pass


def with_claim(encoded: Encoded, worker_id: str, partition: int, epoch: int) -> Encoded:
    """``encoded`` with the claim headers a sink checks (see :class:`~torchstream.nats._fence
    .Fence`)."""
    headers = dict(encoded.headers)
    headers[WORKER_HEADER] = worker_id
    headers[PARTITION_HEADER] = str(partition)
    headers[EPOCH_HEADER] = str(epoch)
    return Encoded(encoded.subject, headers, encoded.body)
