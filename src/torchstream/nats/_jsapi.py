"""A shim over the JetStream JSON API for what nats-py (2.16) does not expose: consumers with
priority groups, pinned pulls and unpinning.

nats-py's ``JetStreamManager`` drops consumer fields it does not know (``priority_groups``,
``priority_policy``, ``priority_timeout``) and its pull subscriptions cannot send a pull
request's ``group`` and ``id``, so this module speaks the API's subjects directly:

- ``$JS.API.CONSUMER.CREATE.<stream>.<consumer>`` with the whole config as JSON;
- ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``: a pull request ``{"batch", "expires",
  "group", "id", ...}`` whose messages (and status replies) come to a reply inbox. Each
  delivered message of a ``pinned_client`` group carries the pin in its ``Nats-Pin-Id``
  header; a request with another (stale) ``id`` gets status 423;
- ``$JS.API.CONSUMER.UNPIN.<stream>.<consumer>`` with ``{"group"}``: the next request
  without an ``id`` gets the pin.

What nats-py does have (connections, stream and KV management, acks on a delivered
:class:`nats.aio.msg.Msg`) is used as it is.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from torchstream.nats._errors import JetStreamError, NatsUnavailableError

__all__ = [
    "PIN_ID_HEADER",
    "JetStreamApi",
    "PinnedPuller",
    "PullOutcome",
    "PullResult",
    "pin_id_of",
]

log = logging.getLogger(__name__)

PIN_ID_HEADER = "Nats-Pin-Id"
"""The header in which the server names the pin of a message delivered to a pinned client."""

_NANOSECONDS = 1_000_000_000


def _nanoseconds(seconds: float) -> int:
    return round(seconds * _NANOSECONDS)


class JetStreamApi:
    """Requests to the JetStream API over ``connection`` (``prefix`` for another domain).

    Each method sends one request and waits at most ``timeout_seconds`` for its answer.
    An answer with an error raises :class:`JetStreamError`; no answer (JetStream off, no
    meta leader, the server gone) raises :class:`NatsUnavailableError`.
    """

    def __init__(
        self, connection: NATS, *, prefix: str = "$JS.API", timeout_seconds: float = 5.0
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds}")
        self.connection = connection
        self.prefix = prefix
        self.timeout_seconds = timeout_seconds

    async def request(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send ``body`` (JSON) to ``<prefix>.<subject>``; the decoded answer."""
        full = f"{self.prefix}.{subject}"
        payload = b"" if body is None else json.dumps(body).encode()
        try:
            reply = await self.connection.request(full, payload, timeout=self.timeout_seconds)
        except nats.errors.NoRespondersError:
            raise NatsUnavailableError(
                f"{full}: no JetStream answers (is the server started with --jetstream, and "
                "does the cluster have a meta leader?)"
            ) from None
        except nats.errors.TimeoutError:
            raise NatsUnavailableError(
                f"{full}: no answer within {self.timeout_seconds} s"
            ) from None
        except nats.errors.ConnectionClosedError as exc:
            raise NatsUnavailableError(f"{full}: the connection is closed") from exc
        answer: dict[str, Any] = json.loads(reply.data)
        error = answer.get("error")
        if error:
            raise JetStreamError(
                full, int(error.get("code", 0)), int(error.get("err_code", 0)),
                str(error.get("description", "")),
            )
        return answer

    async def stream_info(self, stream: str) -> dict[str, Any] | None:
        """The stream's info (``config``, ``state``, ``cluster``), None if there is none."""
        try:
            return await self.request(f"STREAM.INFO.{stream}")
        except JetStreamError as exc:
            if exc.code == 404:
                return None
            raise

    async def create_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        return await self.request(f"STREAM.CREATE.{config['name']}", config)

    async def update_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        return await self.request(f"STREAM.UPDATE.{config['name']}", config)

    async def consumer_info(self, stream: str, consumer: str) -> dict[str, Any] | None:
        """The consumer's info (``config``, ``num_ack_pending``, ``priority_groups`` with
        ``pinned_id`` while one is pinned, ...), None if there is none."""
        try:
            return await self.request(f"CONSUMER.INFO.{stream}.{consumer}")
        except JetStreamError as exc:
            if exc.code == 404:
                return None
            raise

    async def create_consumer(self, stream: str, config: dict[str, Any]) -> dict[str, Any]:
        """Create a durable consumer, or update it to ``config`` (fields in the API's units:
        durations in nanoseconds)."""
        name = config["durable_name"]
        return await self.request(
            f"CONSUMER.CREATE.{stream}.{name}", {"stream_name": stream, "config": config}
        )

    async def unpin(self, stream: str, consumer: str, *, group: str) -> None:
        """Release the pin of ``group``: the next pull request without an id gets it."""
        await self.request(f"CONSUMER.UNPIN.{stream}.{consumer}", {"group": group})


PullOutcome = Literal[
    "complete", "expired", "no_messages", "wrong_pin", "conflict", "bad_request",
    "unavailable", "no_reply",
]
"""How a pull request ended.

``complete``: ``batch`` messages came. ``expired`` (status 408): ``expires`` passed first,
possibly with some messages. ``no_messages`` (404): nothing to deliver to a ``no_wait``
request. ``wrong_pin`` (423): another client holds the pin, or ours was taken (the
puller forgets its pin id). ``conflict`` (409): the consumer was deleted, changed leader,
has too many waiting requests, or a message was over ``max_bytes`` (``description`` says
which). ``bad_request`` (400): no or unknown priority group, bad fields. ``unavailable``
(503): no responders for the consumer. ``no_reply``: neither messages, status nor heartbeat
came within ``expires`` plus a margin (the server or the link is gone).
"""

_STATUS_OUTCOMES: dict[str, PullOutcome] = {
    "408": "expired", "404": "no_messages", "423": "wrong_pin", "409": "conflict",
    "400": "bad_request", "503": "unavailable",
}


@dataclass(frozen=True)
class PullResult:
    """What one pull request brought: its ``messages`` (to ack, nak or term), how it
    ended (``outcome``, :data:`PullOutcome`) and the status ``description`` the server gave.
    ``pin_id`` is the pin the messages carried (None: not pinned / none came);
    ``pending_messages`` the server's ``Nats-Pending-Messages`` count, when it sent one."""

    messages: list[Msg]
    outcome: PullOutcome
    description: str = ""
    pin_id: str | None = None
    pending_messages: int | None = None
    elapsed_seconds: float = field(default=0.0, compare=False)


def pin_id_of(message: Msg) -> str | None:
    """The ``Nats-Pin-Id`` header of a delivered message, None without one."""
    headers = message.headers
    return None if not headers else headers.get(PIN_ID_HEADER)


def _status_of(message: Msg) -> tuple[str, str] | None:
    headers = message.headers
    if not headers or message.reply:
        return None
    status = headers.get("Status")
    if status is None:
        return None
    return status, str(headers.get("Description", ""))


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class PinnedPuller:
    """Pulls from one durable consumer as one member of its ``pinned_client`` priority
    ``group``, remembering its pin.

    Every request goes out with the pin id this puller last received (none at first): the
    server delivers to a request whose id matches the current pin, pins a request without
    id when nobody holds the pin (or the pin timed out: no request from the pinned client
    for ``priority_timeout``), and answers 423 to a stale id (:meth:`pull` then forgets it,
    so the next request competes for the pin again).

    One subscription (a wildcard inbox) serves all of this puller's requests, so messages
    that arrive for a request it stopped waiting for are returned by the next :meth:`pull`
    instead of being lost until their ack wait. Not for concurrent use: one :meth:`pull` at
    a time. :meth:`close` unsubscribes (idempotent); it does not unpin: :meth:`unpin` hands
    the pin over at once, otherwise the pin times out.
    """

    def __init__(
        self,
        connection: NATS,
        stream: str,
        consumer: str,
        *,
        group: str,
        api: JetStreamApi | None = None,
    ) -> None:
        self.connection = connection
        self.stream = stream
        self.consumer = consumer
        self.group = group
        self.api = api or JetStreamApi(connection)
        self.pin_id: str | None = None
        """The pin this puller holds as far as it knows (None: it holds none)."""
        self._inbox = connection.new_inbox()
        self._subscription: Any = None
        self._arrivals: collections.deque[Msg] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._counter = itertools.count()
        self._subject = f"{self.api.prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"

    async def _subscribed(self) -> Any:
        if self._subscription is None:
            # A callback that queues, not ``next_msg``: that one costs a task and a timer
            # per message, which at thousands of messages a second is most of the work.
            self._subscription = await self.connection.subscribe(
                f"{self._inbox}.*", cb=self._arrived,
                pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30,
            )
        return self._subscription

    async def _arrived(self, message: Msg) -> None:
        self._arrivals.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _next(self, timeout_seconds: float) -> Msg | None:
        """The next message on the inbox, or None after ``timeout_seconds`` without one."""
        if not self._arrivals:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout_seconds, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._arrivals:
                return None
        return self._arrivals.popleft()

    async def pull(
        self,
        *,
        batch: int,
        expires_seconds: float,
        max_bytes: int | None = None,
        heartbeat_seconds: float | None = None,
        min_pending: int | None = None,
        min_ack_pending: int | None = None,
        no_wait: bool = False,
        on_message: Callable[[Msg], Awaitable[None]] | None = None,
    ) -> PullResult:
        """Ask for up to ``batch`` messages, waiting at most ``expires_seconds`` on the
        server (``no_wait``: answer at once). Returns when ``batch`` messages came or the
        server ended the request with a status; see :data:`PullOutcome`. ``on_message`` is
        awaited for each message as it arrives (they are in the result too): a request
        waiting for a batch that a slow partition never fills does not hold the first
        messages back until it expires.

        ``heartbeat_seconds`` makes the server send idle heartbeats while the request waits,
        so that a dead link shows as ``no_reply`` after about two heartbeats instead of
        after ``expires_seconds``. ``min_pending`` / ``min_ack_pending``: deliver only while
        the consumer has at least that many pending / unacknowledged messages (the
        ``overflow`` policy's fields, passed through).
        """
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if expires_seconds <= 0 and not no_wait:
            raise ValueError(f"expires_seconds must be > 0, got {expires_seconds}")
        if heartbeat_seconds is not None and not 0 < heartbeat_seconds <= expires_seconds / 2:
            raise ValueError(
                f"heartbeat_seconds must be > 0 and at most half of expires_seconds "
                f"({expires_seconds}), got {heartbeat_seconds}"
            )
        await self._subscribed()
        request: dict[str, Any] = {"batch": batch, "group": self.group}
        if no_wait:
            request["no_wait"] = True
        else:
            request["expires"] = _nanoseconds(expires_seconds)
        if self.pin_id is not None:
            request["id"] = self.pin_id
        if max_bytes is not None:
            request["max_bytes"] = max_bytes
        if heartbeat_seconds is not None:
            request["idle_heartbeat"] = _nanoseconds(heartbeat_seconds)
        if min_pending is not None:
            request["min_pending"] = min_pending
        if min_ack_pending is not None:
            request["min_ack_pending"] = min_ack_pending
        reply = f"{self._inbox}.{next(self._counter)}"
        started = time.monotonic()
        try:
            await self.connection.publish(
                self._subject, json.dumps(request).encode(), reply=reply
            )
        except nats.errors.ConnectionClosedError as exc:
            raise NatsUnavailableError(f"{self._subject}: the connection is closed") from exc
        # Without heartbeats, silence is normal until the request expires.
        quiet_seconds = (
            2.5 * heartbeat_seconds if heartbeat_seconds is not None
            else (1.0 if no_wait else expires_seconds + 1.0)
        )
        messages: list[Msg] = []
        pin_seen: str | None = None
        while True:
            message = await self._next(quiet_seconds)
            if message is None:
                return self._result(messages, "no_reply", "", pin_seen, None, started)
            status = _status_of(message)
            if status is None:
                messages.append(message)
                pin = pin_id_of(message)
                if pin is not None:
                    pin_seen = self.pin_id = pin
                if on_message is not None:
                    await on_message(message)
                if len(messages) >= batch:
                    return self._result(messages, "complete", "", pin_seen, None, started)
                continue
            code, description = status
            if code == "100":
                continue  # idle heartbeat (or flow control): the request is alive
            if message.subject != reply:
                continue  # the end of a request given up earlier
            outcome = _STATUS_OUTCOMES.get(code, "conflict")
            if outcome == "wrong_pin":
                self.pin_id = None
            pending = message.headers.get("Nats-Pending-Messages") if message.headers else None
            return self._result(
                messages, outcome, description, pin_seen,
                int(pending) if pending and pending.isdigit() else None, started,
            )

    @staticmethod
    def _result(
        messages: list[Msg], outcome: PullOutcome, description: str, pin: str | None,
        pending: int | None, started: float,
    ) -> PullResult:
        return PullResult(
            messages, outcome, description, pin, pending, time.monotonic() - started
        )

    async def unpin(self) -> None:
        """Release the group's pin on the server (whoever holds it) and forget ours."""
        self.pin_id = None
        await self.api.unpin(self.stream, self.consumer, group=self.group)

    async def close(self) -> None:
        """Stop receiving (messages still on their way are redelivered after their ack
        wait); idempotent."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None and not self.connection.is_closed:
            with contextlib.suppress(nats.errors.ConnectionClosedError):
                await subscription.unsubscribe()
