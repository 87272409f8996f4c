"""The way out of a worker: results and ends of stream to ``<prefix>.out.<source_id>``, drop
records to ``<prefix>.drop.<source_id>``, in seq order per camera, each input message
acknowledged only once what it produced is stored (so ``max_ack_pending`` stays the
partition's in-flight budget), each drop record sent again until the results stream has
stored it. Runs on the worker's event loop."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NATS

from torchstream.nats._ledger import DropRecord
from torchstream.nats._tickets import Reorder, Ticket

__all__ = ["Emitter"]

log = logging.getLogger(__name__)
trace = logging.getLogger("torchstream.nats.trace")


DROP_ATTEMPTS = 10
"""Sends of a drop record before it is given up (and its frames counted ``drops_unsent``):
with the 5 s ack timeout, about 25 s of refusals (503 while a stream leader is elected, which
takes seconds) or 75 s without any reply."""


@dataclass(eq=False)
class _PendingDrop:
    """A drop record sent to the results stream and not yet confirmed stored."""

    record: DropRecord
    body: bytes
    message_id: str
    """Nats-Msg-Id: the same for every send, so the stream stores the record once."""
    attempts: int = 0


class Emitter:
    """Publishes settled tickets in order and acknowledges their input messages.

    ``may_emit(ticket)`` is awaited just before each result goes out (after a stall it
    waits until the worker knows which partitions it kept): False fences the result (the
    worker lost the partition), and the frame is counted as a ``fenced`` drop,
    not acknowledged (its new owner decides about it). ``on_done(ticket)`` is called once
    per ticket when nothing more will happen to it. ``stored``: wait for the results
    stream's ack before acknowledging the input (True when the layout keeps results), and
    send drop records (kept in that stream too) until it confirms them: a plain message is
    lost when the server it was written to dies, and with it the count of those frames.
    ``drops_stored`` False: the results stream does not keep drop records (one made by an
    earlier version), they go out once as plain messages."""

    def __init__(
        self,
        connection: NATS,
        *,
        drop_subject_of: Callable[[str], str],
        may_emit: Callable[[Ticket], Awaitable[bool]],
        on_drop: Callable[[DropRecord, int, int], None],
        on_done: Callable[[Ticket], None],
        stored: bool,
        drops_stored: bool | None = None,
        ack_timeout_seconds: float = 5.0,
    ) -> None:
        self._connection = connection
        self._drop_subject_of = drop_subject_of
        self._may_emit = may_emit
        self._on_drop = on_drop
        self._on_done = on_done
        self._stored = stored
        self._drops_stored = stored if drops_stored is None else drops_stored and stored
        self._ack_timeout = ack_timeout_seconds
        self._queue: asyncio.Queue[Ticket] = asyncio.Queue()
        self._orders: dict[str, Reorder] = collections.defaultdict(Reorder)
        self._inbox = connection.new_inbox()
        self._tokens = itertools.count()
        self._waiting: dict[str, Ticket] = {}
        """Results sent, waiting for the results stream's ack, by reply token."""
        self._drops_waiting: dict[str, _PendingDrop] = {}
        """Drop records sent, waiting for the results stream's ack, by reply token."""
        self._drops_outstanding: set[_PendingDrop] = set()
        """Drop records not confirmed yet (waiting for an ack, or to be sent again)."""
        self._drops_settled = asyncio.Event()
        self._deadlines: collections.deque[tuple[float, str]] = collections.deque()
        """(time the ack is due, token) in sending order, for :meth:`_expire`."""
        self._subscription: object = None
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._acks: set[asyncio.Task[None]] = set()
        self.published = 0
        self.unstored = 0
        self.drops_unsent = 0
        """Frames whose drop record could not be sent (or, with ``stored``, was not confirmed
        after :data:`DROP_ATTEMPTS` sends)."""
        self.drops_resent = 0
        """Drop records sent again (not confirmed in time, or refused)."""

    async def start(self) -> None:
        if self._stored:
            self._subscription = await self._connection.subscribe(
                f"{self._inbox}.*", cb=self._on_reply
            )
            self._sweeper = asyncio.create_task(self._expire(), name="ts/nats/emit-acks")
        self._task = asyncio.create_task(self._run(), name="ts/nats/emit")

    async def close(self) -> None:
        """Stop; drop records not confirmed yet get up to an ack timeout to be (sent again
        and) confirmed, the rest are counted unsent."""
        if self._drops_outstanding:
            self._drops_settled.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drops_settled.wait(), self._ack_timeout)
        for pending in list(self._drops_outstanding):  # it may be stored: no ack came yet
            self._drop_lost(pending.record, "not confirmed when the worker closed")
        self._drops_outstanding.clear()
        self._drops_waiting.clear()
        for task in (self._task, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- tickets in ---------------------------------------------------------------------

    def add(self, ticket: Ticket) -> None:
        """A ticket whose frame was pushed into the pipeline (not decode-only)."""
        self._orders[ticket.source_id].add(ticket)

    def settle(self, ticket: Ticket) -> None:
        """Its frame came out (``ticket.state`` says how); on the event loop."""
        order = self._orders.get(ticket.source_id)
        if order is None:
            return
        order.settle(ticket)
        for ready in order.ready():
            self._queue.put_nowait(ready)

    def drain(self, source_id: str, reason: str) -> None:
        """Settle every ticket of ``source_id`` still waiting (as dropped for ``reason``)
        and send them out: the camera's source is gone."""
        order = self._orders.pop(source_id, None)
        if order is not None:
            for ticket in order.drain(reason):
                ticket.extra["no_ack"] = True  # its new owner decides about it
                self._queue.put_nowait(ticket)

    def after(self, ticket: Ticket) -> None:
        """Send ``ticket`` (settled already: an end of stream) once every earlier ticket of
        its source has gone out."""
        order = self._orders[ticket.source_id]
        order.add(ticket)
        order.settle(ticket)
        for ready in order.ready():
            self._queue.put_nowait(ready)

    # -- tickets out --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            ticket = await self._queue.get()
            try:
                await self._emit(ticket)
            except Exception:
                log.exception("worker: emitting %s #%d failed", ticket.source_id, ticket.seq)
                self._on_done(ticket)

    async def _emit(self, ticket: Ticket) -> None:
        if trace.isEnabledFor(logging.DEBUG):
            trace.debug("%s #%d p%d e%d out: %s %s%s", ticket.source_id, ticket.seq,
                        ticket.partition, ticket.epoch, ticket.state, ticket.reason or "",
                        " (no ack)" if ticket.extra.get("no_ack") else "")
        if ticket.state == "dropped":
            record = DropRecord(ticket.source_id, ticket.seq, ticket.seq, ticket.reason or "?")
            self._on_drop(record, ticket.partition, ticket.epoch)
            if ticket.extra.get("no_ack"):
                self._on_done(ticket)
            else:
                await self._ack(ticket)
            return
        encoded = ticket.encoded
        if encoded is None or not await self._may_emit(ticket):
            if not ticket.end_of_stream:
                record = DropRecord(ticket.source_id, ticket.seq, ticket.seq, "fenced")
                self._on_drop(record, ticket.partition, ticket.epoch)
            self._on_done(ticket)  # not acknowledged: the partition's new owner decides
            return
        token = str(next(self._tokens)) if self._stored else ""
        try:
            await self._connection.publish(
                encoded.subject, encoded.body,
                reply=f"{self._inbox}.{token}" if self._stored else "", headers=encoded.headers,
            )
        except nats.errors.Error as exc:
            log.warning("worker: cannot publish %s #%d: %r", ticket.source_id, ticket.seq, exc)
            self._on_done(ticket)
            return
        if not ticket.end_of_stream:
            self.published += 1
        if self._stored:
            # Acknowledged when the results stream's ack comes (see _on_reply); one table
            # and one sweeper for the acks that never come, no task or timer per result.
            self._waiting[token] = ticket
            loop = asyncio.get_running_loop()
            self._deadlines.append((loop.time() + self._ack_timeout, token))
        else:
            await self._ack(ticket)

    async def _ack(self, ticket: Ticket) -> None:
        try:
            if ticket.message is not None:
                with contextlib.suppress(nats.errors.Error):
                    await ticket.message.ack()
        finally:
            self._on_done(ticket)

    async def _on_reply(self, reply: object) -> None:
        subject: str = getattr(reply, "subject", "")
        token = subject.rsplit(".", 1)[-1]
        pending = self._drops_waiting.pop(token, None)
        if pending is not None:
            refusal = _refusal(reply)
            if refusal is not None:
                self._resend(pending, refusal)
            else:
                self._drop_settled(pending)
            return
        ticket = self._waiting.pop(token, None)
        if ticket is None:
            return  # answered after its timeout: counted already
        if _refusal(reply) is not None:
            self._unconfirmed(ticket)
            return
        await self._ack(ticket)

    def _unconfirmed(self, ticket: Ticket) -> None:
        """A result went out but the results stream did not confirm it: the worker's server
        may have gone away with it (a node killed with the result in its buffers), so no
        sink may have it. Its input is not acknowledged: redelivered after its ack wait, it
        is a duplicate to the ledger (its seq was decided) and dropped uncounted. Count the
        frame here, or it vanishes silently; a sink that did get the result makes this
        record redundant, which the accounting allows."""
        self.unstored += 1
        log.debug("worker: result %s #%d not confirmed stored", ticket.source_id, ticket.seq)
        if not ticket.end_of_stream:
            record = DropRecord(ticket.source_id, ticket.seq, ticket.seq, "result_unconfirmed")
            self._on_drop(record, ticket.partition, ticket.epoch)
        self._on_done(ticket)

    async def _expire(self) -> None:
        """Give up on results whose ack did not come within the ack timeout: each is counted
        ``result_unconfirmed`` and its input stays unacknowledged (redelivered after the
        consumer's ack wait)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self._ack_timeout / 2))
            now = loop.time()
            deadlines = self._deadlines
            while deadlines and deadlines[0][0] <= now:
                _, token = deadlines.popleft()
                ticket = self._waiting.pop(token, None)
                if ticket is not None:
                    self._unconfirmed(ticket)
                pending = self._drops_waiting.pop(token, None)
                if pending is not None:
                    self._resend(pending, "no ack")

    def publish_drop(self, record: DropRecord, body: bytes) -> None:
        """Send a drop record, in order with the results: with ``stored``, again until the
        results stream confirms it (its Nats-Msg-Id makes a resent copy stored once; a
        subscriber may see both, which accounting counts as redundant); else once."""
        if self._drops_stored:
            pending = _PendingDrop(record, body, "drop-" + hashlib.sha1(body).hexdigest())
            self._drops_outstanding.add(pending)
            self._send_drop(pending)
            return
        task = asyncio.ensure_future(
            self._connection.publish(self._drop_subject_of(record.source_id), body)
        )
        self._acks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._acks.discard)  # type: ignore[arg-type]
        task.add_done_callback(functools.partial(self._drop_sent, record))

    def _drop_sent(self, record: DropRecord, task: asyncio.Future[None]) -> None:
        failure = _failure(task)
        if failure is not None:
            self._drop_lost(record, failure)

    def _drop_lost(self, record: DropRecord, why: object) -> None:
        self.drops_unsent += record.frames
        log.warning("worker: drop record of %s #%d-%d (%s) not sent: %r", record.source_id,
                    record.first_seq, record.last_seq, record.reason, why)

    def _drop_settled(self, pending: _PendingDrop) -> None:
        self._drops_outstanding.discard(pending)
        if not self._drops_outstanding:
            self._drops_settled.set()

    def _send_drop(self, pending: _PendingDrop) -> None:
        if pending not in self._drops_outstanding:
            return  # the emitter closed
        pending.attempts += 1
        token = f"d{next(self._tokens)}"
        self._drops_waiting[token] = pending
        loop = asyncio.get_running_loop()
        self._deadlines.append((loop.time() + self._ack_timeout, token))
        record = pending.record
        task = asyncio.ensure_future(self._connection.publish(
            self._drop_subject_of(record.source_id), pending.body,
            reply=f"{self._inbox}.{token}",
            headers={"Nats-Msg-Id": pending.message_id},
        ))
        self._acks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._acks.discard)  # type: ignore[arg-type]
        task.add_done_callback(functools.partial(self._drop_published, token))

    def _drop_published(self, token: str, task: asyncio.Future[None]) -> None:
        failure = _failure(task)
        if failure is not None:
            pending = self._drops_waiting.pop(token, None)
            if pending is not None:
                self._resend(pending, failure)

    def _resend(self, pending: _PendingDrop, why: object) -> None:
        """Send ``pending`` again after a pause that doubles (0.2 s, 0.4 s, ... at most the ack
        timeout), or give it up after :data:`DROP_ATTEMPTS` sends."""
        if pending not in self._drops_outstanding:
            return  # the emitter closed
        if pending.attempts >= DROP_ATTEMPTS:
            self._drop_lost(pending.record, f"not confirmed after {pending.attempts} sends: {why}")
            self._drop_settled(pending)
            return
        self.drops_resent += 1
        log.debug("worker: drop record of %s #%d sent again (%s)", pending.record.source_id,
                  pending.record.first_seq, why)
        pause = min(self._ack_timeout, 0.2 * 2 ** (pending.attempts - 1))
        asyncio.get_running_loop().call_later(pause, self._send_drop, pending)


def _failure(task: asyncio.Future[None]) -> object | None:
    """Why a publish task did not get its message out (None: it did)."""
    return "cancelled" if task.cancelled() else task.exception()


def _refusal(reply: object) -> str | None:
    """Why the results stream did not store a message (None: it did). A status instead of
    an ack (503: no stream took the subject, its leader is being elected or it is gone), or
    an error in the ack."""
    status = (getattr(reply, "headers", None) or {}).get("Status")
    if status:
        return f"status {status}"
    try:
        answer = json.loads(getattr(reply, "data", b"") or b"{}")
    except ValueError:
        return "unreadable ack"
    if "error" in answer:
        return f"error {answer['error']}"
    return None
