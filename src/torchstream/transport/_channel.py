"""Blocking :class:`Sender` and :class:`Receiver`: one socket each, protocol messages in and
out. They are thin: the checks live in :mod:`._protocol` and :mod:`._inbox`."""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, cast

from torchstream._errors import (
    BrokenResourceError,
    ClosedResourceError,
    MissingDependencyError,
    OverloadedError,
)
from torchstream.transport._endpoint import Endpoint, SocketOptions
from torchstream.transport._inbox import Delivery, Inbox
from torchstream.transport._protocol import (
    EndOfStream,
    EndOfStreamAck,
    Limits,
    Message,
    Shutdown,
    encode,
)
from torchstream.transport._reqrep import Requester
from torchstream.transport._reqrep import deadline as _deadline
from torchstream.transport._reqrep import remaining_ms as _remaining_ms

try:
    import zmq
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("pyzmq", "transport") from exc

__all__ = ["Receiver", "ReceiverStatistics", "Sender", "SenderStatistics"]

log = logging.getLogger(__name__)

_SENDER_TYPES = ("dealer", "req", "push", "pub")
_RECEIVER_TYPES = ("router", "rep", "pull", "sub")

Buffer = bytes | bytearray | memoryview

_OPTIONS = SocketOptions()
_LIMITS = Limits()


@dataclass(frozen=True)
class SenderStatistics:
    endpoint: str
    sent: int
    dropped: int
    """Messages a pub sender dropped because a matching subscriber was at its high-water
    mark (always 0 on reliable endpoints: they block instead)."""
    subscriptions: int
    """pub: live (subscriber, prefix) subscriptions; 0 elsewhere."""
    received: int
    """Replies and acknowledgements accepted (dealer)."""
    rejected: dict[str, int]


@dataclass(frozen=True)
class ReceiverStatistics:
    endpoint: str
    received: int
    """Messages accepted and returned by ``recv``, of every kind."""
    rejected: dict[str, int]
    """Messages dropped, by :data:`~torchstream.transport.RejectReason`."""
    sources: int
    """Sources heard from (the 65,536 most recent)."""
    acks_sent: int
    """End-of-stream acknowledgements (router) and answers (rep) sent."""
    acks_failed: int
    """Acknowledgements and answers that could not go out: their connection was gone or
    full (they never block the receiver)."""

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class _Socket:
    """What both shells share: the socket, its endpoint, closing."""

    _allowed: tuple[str, ...]
    _role: str

    def __init__(
        self,
        endpoint: Endpoint,
        context: zmq.Context[Any] | None,
        options: SocketOptions,
        limits: Limits,
    ) -> None:
        if options.max_part_bytes is None:
            options = replace(options, max_part_bytes=limits.part_cap_bytes)
        self._socket = endpoint.open(context, options=options)
        self.endpoint = endpoint.resolved(self._socket)
        """The endpoint as opened: a bound ``*`` port is the real port here."""
        self._closed = False

    @classmethod
    def _parse(cls, endpoint: Endpoint | str) -> Endpoint:
        parsed = Endpoint.parse(endpoint) if isinstance(endpoint, str) else endpoint
        if parsed.socket_type not in cls._allowed:
            raise ValueError(
                f"a {cls._role} needs a {' / '.join(cls._allowed)} endpoint, got {parsed}"
            )
        return parsed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"{self.endpoint} is closed")

    def _recv_delivery(self, inbox: Inbox, deadline: float | None) -> Delivery | None:
        """The next accepted message, or None when the deadline passed first."""
        while True:
            if not self._socket.poll(_remaining_ms(deadline), zmq.POLLIN):
                return None
            frames = self._socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            delivery = inbox.accept([frame.buffer for frame in frames])
            if delivery is not None:
                return delivery

    def close(self) -> None:
        """Close the socket (idempotent). Messages still queued get ``linger_seconds`` to
        go out; afterwards every method but ``statistics`` raises ClosedResourceError."""
        if not self._closed:
            self._closed = True
            self._socket.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Sender(_Socket):
    """Sends protocol messages on a dealer, req, push or pub endpoint.

    Reliable endpoints (dealer, req, push) never drop: when the receiver does not keep up and
    the high-water mark is reached, ``send`` blocks, up to ``send_timeout_seconds`` (None:
    indefinitely), then raises :class:`~torchstream.OverloadedError` with nothing sent.
    pub never blocks: a message that a matching subscriber has no room for is dropped for
    all subscribers of its topic, counted, and ``send`` returns False.

    On dealer, the receiving router answers each :class:`EndOfStream` with an
    :class:`EndOfStreamAck`: :meth:`send_eos` waits for it. On req, the rep end answers
    every message as it receives it (a :class:`Receipt`, an :class:`EndOfStreamAck` for an
    end of stream) and ``send`` returns only with that answer, so one message at a time is
    in flight: no answer within ``send_timeout_seconds`` raises OverloadedError (the
    receiver may or may not have the message), a receiver that disconnects before answering
    raises :class:`~torchstream.BrokenResourceError` at once, and an answer that rejects
    the message raises :class:`~torchstream.ProtocolError` with the receiver's reason. After
    any of these the next send goes ahead (nothing is re-sent for you: a message you send
    again may reach the receiver twice). Use a sender from one thread at a time (ZeroMQ
    sockets are not thread-safe); ``statistics`` from any thread.
    """

    _allowed = _SENDER_TYPES
    _role = "Sender"

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        context: zmq.Context[Any] | None = None,
        options: SocketOptions = _OPTIONS,
        limits: Limits = _LIMITS,
        send_timeout_seconds: float | None = None,
    ) -> None:
        if send_timeout_seconds is not None and send_timeout_seconds < 0:
            raise ValueError(
                f"send_timeout_seconds must be >= 0 or None, got {send_timeout_seconds}"
            )
        super().__init__(self._parse(endpoint), context, options, limits)
        self._timeout = send_timeout_seconds
        self._hwm = options.high_water_mark
        if send_timeout_seconds is not None:
            self._socket.setsockopt(zmq.SNDTIMEO, round(send_timeout_seconds * 1000))
        self._inbox = Inbox(str(self.endpoint), limits=limits, routed=False, acks_wanted=True)
        self._requester = (
            Requester(self._socket, self.endpoint, self._inbox)
            if self.endpoint.socket_type == "req" else None
        )
        self._pending: collections.deque[tuple[Message, memoryview | None]] = (
            collections.deque()
        )
        self._sent = 0
        self._dropped = 0
        self._subscriptions = 0

    def send(self, message: Message, payload: Buffer | None = None) -> bool:
        """Send ``message`` with its payload (zero-copy: do not modify the buffer after).

        Returns True when the message was queued (req: and answered), False when pub dropped
        it. Raises ``ValueError`` for a message the protocol rejects, OverloadedError when a
        reliable endpoint stayed full (req: unanswered) for ``send_timeout_seconds``.
        """
        self._check_open()
        parts = encode(message, payload)
        if self._requester is not None:
            until = _deadline(self._timeout)
            self._requester.send(parts, self._timeout)
            self._sent += 1
            if self._requester.answer(message, until) is None:
                raise OverloadedError(
                    f"{self.endpoint}: no answer within {self._timeout} s: the receiver is not "
                    "keeping up, or lost the message; it may or may not have it"
                )
            return True
        if self.endpoint.socket_type == "pub":
            self._read_subscriptions()
            try:
                self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._dropped += 1
                return False
        else:
            try:
                self._socket.send_multipart(parts, copy=False)
            except zmq.Again:
                raise OverloadedError(
                    f"{self.endpoint}: no room to send within {self._timeout} s: the receiver "
                    f"is not keeping up (high-water mark of {self._hwm} messages reached); "
                    "nothing was sent"
                ) from None
        self._sent += 1
        return True

    def send_eos(
        self,
        source_id: str,
        *,
        last_seq: int | None,
        traceparent: str | None = None,
        ack_timeout_seconds: float | None = 10.0,
    ) -> EndOfStreamAck | None:
        """End ``source_id``'s stream. On dealer and req, wait up to ``ack_timeout_seconds``
        (None: indefinitely) for the receiver's acknowledgement and return it, or raise
        ``TimeoutError``; on dealer, messages that arrive meanwhile wait for :meth:`recv`.
        push and pub have no way back: they return None once the message is queued (pub: or
        dropped)."""
        eos = EndOfStream(source_id=source_id, last_seq=last_seq, traceparent=traceparent)
        deadline = _deadline(ack_timeout_seconds)
        if self._requester is not None:
            self._check_open()
            self._requester.send(encode(eos), self._timeout)
            self._sent += 1
            answer = self._requester.answer(eos, deadline)
            if not isinstance(answer, EndOfStreamAck):  # None: answer_problem checked the rest
                raise TimeoutError(
                    f"{self.endpoint}: end-of-stream of {source_id!r} not acknowledged within "
                    f"{ack_timeout_seconds} s"
                )
            return answer
        self.send(eos)
        if self.endpoint.socket_type != "dealer":
            return None
        while True:
            delivery = self._recv_delivery(self._inbox, deadline)
            if delivery is None:
                raise TimeoutError(
                    f"{self.endpoint}: end-of-stream of {source_id!r} not acknowledged within "
                    f"{ack_timeout_seconds} s"
                )
            message = delivery.message
            if isinstance(message, EndOfStreamAck) and (message.source_id, message.last_seq) == (
                source_id,
                last_seq,
            ):
                return message
            self._pending.append((message, delivery.payload))

    def recv(self, timeout_seconds: float | None = None) -> tuple[Message, memoryview | None]:
        """The next message the receiving end sent back (dealer only): an acknowledgement or
        a reply, checked like any received message. Raises ``TimeoutError`` after
        ``timeout_seconds`` (None: wait indefinitely)."""
        self._check_open()
        if self.endpoint.socket_type != "dealer":
            raise ValueError(f"{self.endpoint}: only a dealer receives replies")
        if self._pending:
            return self._pending.popleft()
        delivery = self._recv_delivery(self._inbox, _deadline(timeout_seconds))
        if delivery is None:
            raise TimeoutError(f"{self.endpoint}: nothing received in {timeout_seconds} s")
        return delivery.message, delivery.payload

    def wait_for_subscribers(self, count: int = 1, *, timeout_seconds: float = 10.0) -> None:
        """Wait until pub has ``count`` live subscriptions, or raise ``TimeoutError``.

        A subscription takes a moment to reach the publisher after the subscriber connects,
        and until then its messages are not sent to it: wait here when the first messages
        matter (a test, a module starting before its sinks)."""
        self._check_open()
        if self.endpoint.socket_type != "pub":
            raise ValueError(f"{self.endpoint}: only pub has subscribers")
        deadline = _deadline(timeout_seconds)
        while True:
            self._read_subscriptions()
            if self._subscriptions >= count:
                return
            if not self._socket.poll(_remaining_ms(deadline), zmq.POLLIN):
                raise TimeoutError(
                    f"{self.endpoint}: {self._subscriptions} of {count} subscriptions after "
                    f"{timeout_seconds} s"
                )

    def _read_subscriptions(self) -> None:
        # XPUB hands every (un)subscription to the application; read them as they come so
        # that they do not pile up, and keep the count.
        while cast(int, self._socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            event = self._socket.recv(zmq.NOBLOCK)
            if event[:1] == b"\x01":
                self._subscriptions += 1
            elif event[:1] == b"\x00":
                self._subscriptions = max(0, self._subscriptions - 1)

    def statistics(self) -> SenderStatistics:
        return SenderStatistics(
            endpoint=str(self.endpoint),
            sent=self._sent,
            dropped=self._dropped,
            subscriptions=self._subscriptions,
            received=self._inbox.received,
            rejected=self._inbox.rejects.snapshot(),
        )

    def close(self) -> None:
        if not self._closed and self._requester is not None:
            self._requester.close()
        super().close()

    def __enter__(self) -> Sender:
        return self


class Receiver(_Socket):
    """Receives protocol messages on a router, rep, pull or sub endpoint.

    Every message is checked (:func:`~torchstream.transport.decode`); a bad one is counted
    by reason in :meth:`statistics`, logged (the first of each reason, then at most one line
    per reason every 10 s) and skipped: ``recv`` goes on to the next. A :class:`Shutdown` is
    returned only when ``shutdown_secret`` is set and matches; others are rejected.

    On router, an :class:`EndOfStream` is acknowledged to the connection it came on as soon
    as it is received (``ack_eos=False``: send the :class:`EndOfStreamAck` yourself with
    :meth:`reply`). Sources are told apart by the source id in each message, never by the
    connection: interleaved sources on one connection, or a source that comes back on a new
    connection after its adapter restarted, are all fine. On rep, every message is answered
    as soon as it is received, before ``recv`` returns it (:class:`Receipt`, or
    :class:`EndOfStreamAck` for an end of stream), and so is every rejected one (a receipt
    with the reason), so that no requester is left waiting; ``ack_eos`` must stay True
    there. The requester sends its next message only then, which makes the pace of ``recv``
    its backpressure. ``subscribe`` (sub only): source
    id prefixes to receive; default everything.

    Use a receiver from one thread at a time; ``statistics`` from any thread.
    """

    _allowed = _RECEIVER_TYPES
    _role = "Receiver"

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        context: zmq.Context[Any] | None = None,
        options: SocketOptions = _OPTIONS,
        limits: Limits = _LIMITS,
        subscribe: Sequence[str] | None = None,
        shutdown_secret: str | None = None,
        ack_eos: bool = True,
    ) -> None:
        if shutdown_secret is not None and not shutdown_secret:
            raise ValueError("shutdown_secret must be a non-empty string or None")
        if isinstance(subscribe, str):
            raise ValueError(f"subscribe must be a sequence of prefixes, got {subscribe!r}")
        parsed = self._parse(endpoint)
        if subscribe is not None and parsed.socket_type != "sub":
            raise ValueError(f"subscribe is for sub endpoints, not {parsed}")
        if not ack_eos and parsed.socket_type == "rep":
            raise ValueError(f"{parsed}: rep answers every message at once; ack_eos=False is "
                             "for router endpoints")
        super().__init__(parsed, context, options, limits)
        if self.endpoint.socket_type == "sub":
            for prefix in ("",) if subscribe is None else subscribe:
                self._socket.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self._inbox = Inbox(
            str(self.endpoint),
            limits=limits,
            routed=self.endpoint.socket_type == "router",
            ack_eos=ack_eos,
            shutdown_secret=shutdown_secret,
        )
        self._acks_sent = 0
        self._acks_failed = 0

    def recv(self, timeout_seconds: float | None = None) -> tuple[Message, memoryview | None]:
        """The next valid message and its payload (a zero-copy view of the received part,
        None when there is none). Raises ``TimeoutError`` when nothing valid came within
        ``timeout_seconds`` (None: wait indefinitely)."""
        self._check_open()
        if self.endpoint.socket_type == "rep":
            delivery = self._recv_request(_deadline(timeout_seconds))
        else:
            delivery = self._recv_delivery(self._inbox, _deadline(timeout_seconds))
        if delivery is None:
            raise TimeoutError(f"{self.endpoint}: nothing received in {timeout_seconds} s")
        if delivery.ack is not None:
            self._send_ack(delivery.ack, delivery.message)
        return delivery.message, delivery.payload

    def _recv_request(self, deadline: float | None) -> Delivery | None:
        """rep: the next accepted message, every message answered (None: deadline passed)."""
        while True:
            if not self._socket.poll(_remaining_ms(deadline), zmq.POLLIN):
                return None
            frames = self._socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            delivery, answer = self._inbox.accept_request([frame.buffer for frame in frames])
            self._send_ack(answer, delivery.message if delivery is not None else None)
            if delivery is not None:
                return delivery

    def _send_ack(self, parts: list[bytes | memoryview], message: Message | None) -> None:
        try:
            self._socket.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # EAGAIN: its queue is full; EHOSTUNREACH: it is gone
            self._acks_failed += 1
            log.warning("%s: could not acknowledge %r: %s", self.endpoint, message, exc)
        else:
            self._acks_sent += 1

    def reply(self, message: Message, payload: Buffer | None = None) -> None:
        """Send ``message`` back to the connection that last sent for its source (router
        only). Never blocks: raises :class:`~torchstream.OverloadedError` when that
        connection's queue is full and :class:`~torchstream.BrokenResourceError` when no
        connection speaks for the source any more."""
        self._check_open()
        if self.endpoint.socket_type != "router":
            raise ValueError(f"{self.endpoint}: only a router replies")
        if isinstance(message, Shutdown) or message.source_id is None:
            raise ValueError(f"{message!r} has no source to reply to")
        peer = self._inbox.route(message.source_id)
        if peer is None:
            raise BrokenResourceError(
                f"{self.endpoint}: no connection has sent for source {message.source_id!r}"
            )
        parts = [peer, *encode(message, payload)]
        try:
            self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise OverloadedError(
                f"{self.endpoint}: the connection of {message.source_id!r} is full"
            ) from None
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            raise BrokenResourceError(
                f"{self.endpoint}: the connection of {message.source_id!r} is gone"
            ) from None

    def statistics(self) -> ReceiverStatistics:
        return ReceiverStatistics(
            endpoint=str(self.endpoint),
            received=self._inbox.received,
            rejected=self._inbox.rejects.snapshot(),
            sources=self._inbox.sources,
            acks_sent=self._acks_sent,
            acks_failed=self._acks_failed,
        )

    def __enter__(self) -> Receiver:
        return self

