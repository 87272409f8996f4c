"""The req side of a req -> rep pair, blocking: one message at a time, each answered by the
rep end before the next goes out (see :func:`~torchstream.transport._inbox.answer_problem`
for what a right answer is).

Plain ZeroMQ REQ sockets are strict: once a reply is lost (the rep process died with the
request) the socket refuses to send again, forever. Endpoint.open gives req sockets
ZMQ_REQ_RELAXED (a new request may go out without the previous answer) and
ZMQ_REQ_CORRELATE (requests carry an id and a late answer to an earlier request is dropped
by libzmq), so the next send after a lost answer just works. A socket monitor tells when a
receiver disconnects while an answer is awaited, so that the wait ends at once with
:class:`~torchstream.BrokenResourceError` instead of running into its timeout (or forever,
without one).
"""

from __future__ import annotations

import time
from typing import Any

from torchstream._errors import (
    BrokenResourceError,
    MissingDependencyError,
    OverloadedError,
    ProtocolError,
)
from torchstream.transport._endpoint import Endpoint
from torchstream.transport._inbox import Inbox, answer_problem
from torchstream.transport._protocol import Message

try:
    import zmq
    from zmq.utils.monitor import recv_monitor_message
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("pyzmq", "transport") from exc

__all__ = ["Requester", "deadline", "remaining_ms"]


def deadline(timeout_seconds: float | None) -> float | None:
    """The monotonic time ``timeout_seconds`` from now (None: no deadline)."""
    if timeout_seconds is not None and timeout_seconds < 0:
        raise ValueError(f"timeout_seconds must be >= 0 or None, got {timeout_seconds}")
    return None if timeout_seconds is None else time.monotonic() + timeout_seconds


def remaining_ms(deadline: float | None) -> int | None:
    """Milliseconds left until ``deadline`` (0 once past; None: no deadline), for poll."""
    if deadline is None:
        return None
    return max(0, round((deadline - time.monotonic()) * 1000))


class Requester:
    """Sends on a req ``socket`` and waits for each answer; the owner closes it first."""

    def __init__(self, socket: zmq.Socket[Any], endpoint: Endpoint, inbox: Inbox) -> None:
        self._socket = socket
        self._endpoint = endpoint
        self._inbox = inbox
        self._monitor: zmq.Socket[Any] = socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._poller = zmq.Poller()
        self._poller.register(socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    def send(self, parts: list[bytes | memoryview], timeout_seconds: float | None) -> None:
        """Send one request; OverloadedError with nothing sent when no receiver took it
        within the socket's send timeout (``timeout_seconds``, for the message)."""
        self._receivers_left()  # disconnections before this request do not concern it
        try:
            self._socket.send_multipart(parts, copy=False)
        except zmq.Again:
            raise OverloadedError(
                f"{self._endpoint}: no room to send within {timeout_seconds} s: no receiver "
                "is connected, or it is not keeping up; nothing was sent"
            ) from None

    def answer(self, request: Message, until: float | None) -> Message | None:
        """The answer to ``request`` (just sent), or None when none came by ``until``.

        Raises BrokenResourceError when a receiver disconnected meanwhile (the request may
        be lost with it: send again to be sure, at the risk of a copy), ProtocolError when
        the answer rejects the request (its reason is the receiver's) or cannot be read.
        Either way the socket can send the next request."""
        while True:
            ready = dict(self._poller.poll(remaining_ms(until)))
            if not ready:
                return None
            if self._socket in ready:
                try:
                    frames = self._socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:  # a late answer to an earlier request, dropped by libzmq
                    continue
                checked = self._inbox.check([frame.buffer for frame in frames])
                if isinstance(checked, ProtocolError):
                    raise ProtocolError(
                        checked.reason, f"{self._endpoint}: unreadable answer: {checked.detail}"
                    )
                problem = answer_problem(request, checked.message)
                if problem is not None:
                    raise ProtocolError(problem.reason, f"{self._endpoint}: {problem.detail}")
                return checked.message
            if self._monitor in ready and self._receivers_left():
                raise BrokenResourceError(
                    f"{self._endpoint}: the receiver disconnected before answering; the "
                    "message may be lost (send it again to be sure, at the risk of a copy)"
                )

    def _receivers_left(self) -> bool:
        """Whether a receiver disconnected since the last call (reads the monitor)."""
        left = False
        while self._monitor.poll(0, zmq.POLLIN):
            event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            left = left or event["event"] == zmq.EVENT_DISCONNECTED
        return left

    def close(self) -> None:
        """Stop monitoring (before the socket closes)."""
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
