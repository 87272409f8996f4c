"""What a receiving end does with each multipart message, sans-IO: validate, count and log
rejects, check shutdown secrets, remember which peer speaks for which source, and say what to
send back. The blocking :mod:`._channel` shells (and an asyncio one later) do the I/O."""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from torchstream._errors import ProtocolError
from torchstream.transport._protocol import (
    EndOfStream,
    EndOfStreamAck,
    FrameMessage,
    Limits,
    Message,
    Receipt,
    RejectReason,
    ResultAck,
    ResultMessage,
    Shutdown,
    decode,
    encode,
)
from torchstream.transport._rejects import Rejects

__all__ = ["Delivery", "Inbox", "answer_problem"]

log = logging.getLogger(__name__)

_MAX_ROUTES = 65536  # sources remembered per inbox; the least recently heard go first


@dataclass(frozen=True)
class Delivery:
    """A message that passed every check, its payload, and what to send back for it.

    ``peer`` is the ROUTER routing id of the connection it came on (None on other socket
    types). ``ack`` holds the parts of an :class:`EndOfStreamAck` to send back, routing id
    included, when the inbox acknowledges end-of-stream; sending it must never block.
    """

    message: Message
    payload: memoryview | None
    peer: bytes | None
    ack: list[bytes | memoryview] | None


class Inbox:
    """The receiving half of an endpoint, without its socket.

    ``routed``: messages start with a ROUTER routing id. ``acks_wanted``: the end takes
    :class:`EndOfStreamAck` (a sender reading replies) rather than rejecting it as
    ``unexpected_kind``. ``ack_eos``: answer each :class:`EndOfStream` with an ack to the
    connection it came on. Rep endpoints answer every request instead, through
    :meth:`accept_request`. ``shutdown_secret``: accept :class:`Shutdown` only with this
    secret; None rejects every shutdown.

    Streams are known by the source id in each header, never by routing id: :meth:`route`
    gives the routing id of the connection that last spoke for a source, so a source whose
    adapter restarted (new connection, new routing id) is reached on its new connection.
    """

    def __init__(
        self,
        name: str,
        *,
        limits: Limits,
        routed: bool,
        acks_wanted: bool = False,
        ack_eos: bool = False,
        shutdown_secret: str | None = None,
        rejects: Rejects | None = None,
    ) -> None:
        self.name = name
        self.limits = limits
        self.rejects = Rejects() if rejects is None else rejects
        self.received = 0
        self._routed = routed
        self._acks_wanted = acks_wanted
        self._ack_eos = ack_eos and routed
        self._secret = shutdown_secret
        self._routes: collections.OrderedDict[str, bytes | None] = collections.OrderedDict()

    def accept(self, parts: Sequence[bytes | memoryview]) -> Delivery | None:
        """Check one received message; None when it was rejected (counted and maybe logged)."""
        delivery = self.check(parts)
        return None if isinstance(delivery, ProtocolError) else delivery

    def accept_request(
        self, parts: Sequence[bytes | memoryview]
    ) -> tuple[Delivery | None, list[bytes | memoryview]]:
        """Check one request received on a rep endpoint (not routed): the delivery (None
        when rejected) and, whatever happened, the parts of the answer that must go back
        before the next request is read: an :class:`EndOfStreamAck` for an end of stream,
        a :class:`Receipt` for anything else (with the reject reason when rejected)."""
        delivery = self.check(parts)
        if isinstance(delivery, ProtocolError):
            reason = cast(RejectReason, delivery.reason)
            return None, encode(Receipt(rejected=reason))
        message = delivery.message
        answer: Message
        if isinstance(message, EndOfStream):
            answer = EndOfStreamAck(source_id=message.source_id, last_seq=message.last_seq)
        elif isinstance(message, Shutdown):
            answer = Receipt()
        elif isinstance(message, (FrameMessage, ResultMessage)):
            answer = Receipt(source_id=message.source_id, seq=message.seq)
        else:
            answer = Receipt(source_id=message.source_id)
        return delivery, encode(answer)

    def check(self, parts: Sequence[bytes | memoryview]) -> Delivery | ProtocolError:
        """:meth:`accept`, returning the error of a rejected message (counted and maybe
        logged) instead of None."""
        peer: bytes | None = None
        if self._routed:
            peer, parts = bytes(parts[0]), parts[1:]
        try:
            message, payload = decode(parts, limits=self.limits)
            self._admit(message)
        except ProtocolError as exc:
            self._reject(exc, peer)
            return exc
        self.received += 1
        ack: list[bytes | memoryview] | None = None
        if not isinstance(message, (Shutdown, EndOfStreamAck, ResultAck, Receipt)):
            self._remember(message.source_id, peer)
        if isinstance(message, EndOfStream) and self._ack_eos and peer is not None:
            reply = EndOfStreamAck(source_id=message.source_id, last_seq=message.last_seq)
            ack = [peer, *encode(reply)]
        return Delivery(message, payload, peer, ack)

    def _admit(self, message: Message) -> None:
        if isinstance(message, (EndOfStreamAck, ResultAck, Receipt)) and not self._acks_wanted:
            raise ProtocolError(
                "unexpected_kind", "acknowledgements are for senders, not receivers"
            )
        if isinstance(message, Shutdown):
            if self._secret is None:
                raise ProtocolError("shutdown_refused", "this end has no shutdown secret")
            if not message.matches(self._secret):
                raise ProtocolError("shutdown_refused", "wrong shutdown secret")

    def _reject(self, exc: ProtocolError, peer: bytes | None) -> None:
        unlogged = self.rejects.add(exc.reason)
        if unlogged is None:
            return
        more = f" ({unlogged} more {exc.reason} rejects unlogged since)" if unlogged else ""
        sender = f" from peer {peer.hex()}" if peer is not None else ""
        log.warning(
            "%s: rejected a message%s: %s%s", self.name, sender, exc, more,
            extra={"reject_reason": exc.reason},
        )

    def _remember(self, source_id: str, peer: bytes | None) -> None:
        self._routes[source_id] = peer
        self._routes.move_to_end(source_id)
        if len(self._routes) > _MAX_ROUTES:
            self._routes.popitem(last=False)

    def route(self, source_id: str) -> bytes | None:
        """The routing id of the connection that last sent for ``source_id`` (None: none has,
        or not on a routed socket). Kept after end-of-stream, so that late replies still
        reach the source."""
        return self._routes.get(source_id)

    @property
    def sources(self) -> int:
        """Sources heard from (the 65,536 most recent are remembered)."""
        return len(self._routes)


def answer_problem(request: Message, answer: Message) -> ProtocolError | None:
    """What is wrong with ``answer`` as a rep endpoint's answer to ``request``, or None when
    it accepts it: an :class:`EndOfStreamAck` of the same stream and last seq for an end of
    stream, a :class:`Receipt` naming the same message otherwise. A rejecting receipt gives
    a ProtocolError of the reason the receiver gave."""
    what = f"{type(request).__name__}"
    if not isinstance(request, Shutdown):
        what += f" of {request.source_id!r}"
    if isinstance(answer, Receipt) and answer.rejected is not None:
        return ProtocolError(answer.rejected, f"the receiver rejected the {what}")
    if isinstance(request, EndOfStream):
        expected: Message = EndOfStreamAck(
            source_id=request.source_id, last_seq=request.last_seq
        )
    elif isinstance(request, Shutdown):
        expected = Receipt()
    elif isinstance(request, (FrameMessage, ResultMessage)):
        expected = Receipt(source_id=request.source_id, seq=request.seq)
    else:
        expected = Receipt(source_id=request.source_id)
    if answer != expected:
        return ProtocolError(
            "unexpected_kind", f"the answer to the {what} is {answer!r}, not {expected!r}"
        )
    return None
