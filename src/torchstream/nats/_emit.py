"""The way out of a worker: results and ends of stream to ``<prefix>.out.<source_id>``, drop
records to ``<prefix>.drop.<source_id>``, in seq order per camera, each input message
acknowledged only once what it produced is stored (so ``max_ack_pending`` stays the
partition's in-flight budget). Runs on the worker's event loop."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import json
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NATS

from torchstream.nats._ledger import DropRecord
from torchstream.nats._tickets import Reorder, Ticket

__all__ = ["Emitter"]

log = logging.getLogger(__name__)
trace = logging.getLogger("torchstream.nats.trace")


class Emitter:
    """Publishes settled tickets in order and acknowledges their input messages.

    ``may_emit(ticket)`` is awaited just before each result goes out (after a stall it
    waits until the worker knows which partitions it kept): False fences the result (the
    worker lost the partition), and the frame is counted as a ``fenced`` drop,
    not acknowledged (its new owner decides about it). ``on_done(ticket)`` is called once
    per ticket when nothing more will happen to it. ``stored``: wait for the results
    stream's ack before acknowledging the input (True when the layout keeps results)."""

    def __init__(
        self,
        connection: NATS,
        *,
        drop_subject_of: Callable[[str], str],
        may_emit: Callable[[Ticket], Awaitable[bool]],
        on_drop: Callable[[DropRecord, int, int], None],
        on_done: Callable[[Ticket], None],
        stored: bool,
        ack_timeout_seconds: float = 5.0,
    ) -> None:
        self._connection = connection
        self._drop_subject_of = drop_subject_of
        self._may_emit = may_emit
        self._on_drop = on_drop
        self._on_done = on_done
        self._stored = stored
        self._ack_timeout = ack_timeout_seconds
        self._queue: asyncio.Queue[Ticket] = asyncio.Queue()
        self._orders: dict[str, Reorder] = collections.defaultdict(Reorder)
        self._inbox = connection.new_inbox()
        self._tokens = itertools.count()
        self._waiting: dict[str, Ticket] = {}
        """Results sent, waiting for the results stream's ack, by reply token."""
        self._deadlines: collections.deque[tuple[float, str]] = collections.deque()
        """(time the ack is due, token) in sending order, for :meth:`_expire`."""
        self._subscription: object = None
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._acks: set[asyncio.Task[None]] = set()
        self.published = 0
        self.unstored = 0
        self.drops_unsent = 0
        """Frames whose drop record could not be sent."""

    async def start(self) -> None:
        if self._stored:
            self._subscription = await self._connection.subscribe(
                f"{self._inbox}.*", cb=self._on_reply
            )
            self._sweeper = asyncio.create_task(self._expire(), name="ts/nats/emit-acks")
        self._task = asyncio.create_task(self._run(), name="ts/nats/emit")

    async def close(self) -> None:
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
        ticket = self._waiting.pop(subject.rsplit(".", 1)[-1], None)
        if ticket is None:
            return  # answered after its timeout: counted already
        if (getattr(reply, "headers", None) or {}).get("Status"):
            # A status instead of an ack: 503, no stream took the subject (its leader is
            # being elected, or it is gone).
            self._unconfirmed(ticket)
            return
        try:
            answer = json.loads(getattr(reply, "data", b"") or b"{}")
        except ValueError:
            answer = {"error": "unreadable"}
        if "error" in answer:
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

    def publish_drop(self, record: DropRecord, body: bytes) -> None:
        """Send a drop record (fire and forget, in order with the results)."""
        task = asyncio.ensure_future(
            self._connection.publish(self._drop_subject_of(record.source_id), body)
        )
        self._acks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._acks.discard)  # type: ignore[arg-type]
        task.add_done_callback(functools.partial(self._drop_sent, record))

    def _drop_sent(self, record: DropRecord, task: asyncio.Future[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or error is not None:
            self.drops_unsent += record.frames
            log.warning("worker: drop record of %s #%d-%d (%s) not sent: %r", record.source_id,
                        record.first_seq, record.last_seq, record.reason, error or "cancelled")
