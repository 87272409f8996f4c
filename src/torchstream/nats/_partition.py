"""One partition owned by a worker: its claim, its pinned pull loop, the handover of each of
its cameras (handover point, replay from the last keyframe) and the ledger's decisions.

The worker (:mod:`torchstream.nats._worker`) starts an :class:`OwnedPartition` when the
assignment gives it the partition and stops it (gracefully: stop pulling, let the frames in
flight finish) when the assignment moves it away or the worker leaves. Everything here runs
on the worker's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from torchstream._errors import ProtocolError
from torchstream.nats._errors import JetStreamError, NatsUnavailableError
from torchstream.nats._jsapi import PinnedPuller, PullResult
from torchstream.nats._ledger import Action, Delivery, DropRecord, StreamLedger, Verdict
from torchstream.nats._tickets import Ticket
from torchstream.nats._wire import Decoded, decode, decode_keyframe_position
from torchstream.transport._protocol import EndOfStream, FrameMessage, ResultMessage

if TYPE_CHECKING:
    from torchstream.nats._worker import Worker

__all__ = ["OwnedPartition"]

log = logging.getLogger(__name__)
trace = logging.getLogger("torchstream.nats.trace")
"""One DEBUG line per message and per decision (``--log-level debug``): to follow a camera's
frames through takeovers when the accounting does not add up."""

_WRONG_PIN_RETRY_SECONDS = 0.02
"""Pause before asking again while another worker still holds the pin (it is draining)."""


class OwnedPartition:
    """The claim and the pull loop of one partition. :meth:`start` claims (a new epoch) and
    pulls; :meth:`stop` stops pulling; the worker then drains and :meth:`unpin`s."""

    def __init__(self, worker: Worker, partition: int) -> None:
        self.worker = worker
        self.partition = partition
        self.epoch = 0
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self.claimed_at_seconds = time.monotonic()
        self.first_delivery_seconds: float | None = None
        self.ledgers: dict[str, StreamLedger] = {}
        self.ended: dict[str, int] = {}
        """Per camera, the stream sequence of the end of stream this claim handled: frames
        of that session delivered after it (redeliveries of a previous owner's frames in
        flight) are accounted for already and must not start a new session."""
        self.room = asyncio.Event()
        """Set when one of its frames is done: the pull loop waits on it at the budget."""
        layout = worker.layout
        self.puller = PinnedPuller(
            worker.connection,
            layout.input_stream,
            layout.consumer_name(partition),
            group=layout.priority_group,
            api=worker.api,
        )

    async def start(self) -> None:
        epoch = await self.worker.claim(self.partition)
        if self.stopping:
            # Fenced or released while its claim was being written: the worker has already
            # forgotten it, so it must not pull (an orphan nobody stops, whose takeover
            # windows nobody counts) nor leave its claim standing.
            if self.worker._claims.get(self.partition) == epoch:
                del self.worker._claims[self.partition]
            return
        self.epoch = epoch
        self.task = asyncio.create_task(self._pull_loop(), name=f"ts/nats/p{self.partition}")

    async def stop(self) -> None:
        """Stop pulling; returns once the loop has handled what its last pull brought."""
        self.stopping = True
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def cancel(self) -> None:
        """Stop at once (a fenced worker): what the current pull brings is not handled."""
        self.stopping = True
        if self.task is not None:
            self.task.cancel()

    async def unpin(self) -> None:
        try:
            await self.puller.unpin()
        except (JetStreamError, NatsUnavailableError) as exc:
            log.info("worker: unpin of partition %d failed: %s", self.partition, exc)
        await self.puller.close()

    # -- the pull loop -------------------------------------------------------------------

    async def _pull_loop(self) -> None:
        worker = self.worker
        while not self.stopping:
            room = worker.room(self.partition)
            try:
                if room <= 0:
                    result = await self._wait_for_room()
                else:
                    result = await self.puller.pull(
                        batch=min(worker.pull_batch, room),
                        expires_seconds=worker.pull_expires_seconds,
                        on_message=self._deliver,
                    )
            except NatsUnavailableError:
                await asyncio.sleep(worker.pull_expires_seconds)
                continue
            if not worker.check_progress():
                # Stalled: the worker checks its claims; fenced, this task is cancelled
                # (these messages come back to the partition's new owner).
                await worker.after_stall()
                if self.stopping:
                    return
            if room <= 0:
                continue
            if result.outcome == "wrong_pin" and not result.messages:
                await asyncio.sleep(_WRONG_PIN_RETRY_SECONDS)
            elif result.outcome in ("conflict", "bad_request", "unavailable", "no_reply"):
                log.debug(
                    "worker: partition %d pull ended %s %s",
                    self.partition,
                    result.outcome,
                    result.description,
                )
                await asyncio.sleep(worker.pull_expires_seconds / 2)

    async def _deliver(self, message: Msg) -> None:
        """Handle one message as it arrives (the pull it came with may wait for more)."""
        worker = self.worker
        if not worker.check_progress():
            # Stalled: the worker checks its claims; fenced, this task is cancelled (the
            # message comes back to the partition's new owner).
            await worker.after_stall()
        if self.first_delivery_seconds is None:
            self.first_delivery_seconds = time.monotonic()
        await self._handle(message)

    async def _wait_for_room(self) -> PullResult:
        """At the in-flight budget: keep the pin with a request that cannot deliver (one
        byte at most: the server answers at once, or when the request expires, without a
        message), then wait until a frame is done or the pin needs asking again. What is not
        pulled stays in the stream, whose limits may discard it: the worker then sees a hole
        and counts it as ``broker_discard``."""
        worker = self.worker
        self.room.clear()
        started = time.monotonic()
        result = await self.puller.pull(
            batch=1, expires_seconds=worker.pull_expires_seconds, max_bytes=1,
            on_message=self._deliver,  # one left over from an earlier request
        )
        left = worker.pull_expires_seconds / 2 - (time.monotonic() - started)
        if left > 0 and worker.room(self.partition) <= 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.room.wait(), left)
        return result

    async def _handle(self, message: Msg) -> None:
        worker = self.worker
        try:
            metadata = message.metadata
            decoded = decode(message.subject, message.headers, message.data)
        except (ProtocolError, ValueError) as exc:
            worker.count("rejected")
            log.warning("worker: rejected a message on %s: %s", message.subject, exc)
            await _ack(message)
            return
        stream_seq = metadata.sequence.stream
        inner = decoded.message
        if isinstance(inner, EndOfStream):
            await self._end_of_stream(inner, message, stream_seq)
            return
        if not isinstance(inner, FrameMessage):
            worker.count("rejected")
            await _ack(message)
            return
        ended_at = self.ended.get(inner.source_id)
        if ended_at is not None and stream_seq < ended_at:
            trace.debug("%s #%d stream %d p%d e%d: after its end", inner.source_id, inner.seq,
                        stream_seq, self.partition, self.epoch)
            # Its session ended (and its takeover window was counted) before it came back.
            worker.record_drop(DropRecord(inner.source_id, inner.seq, inner.seq, "duplicate"),
                               self.partition, self.epoch)
            await _ack(message)
            return
        ledger = self.ledgers.get(inner.source_id)
        if ledger is None:
            ledger = await self._take_over(inner, stream_seq)
        first_seq = await self._stream_first_seq(ledger, inner.seq)
        if ledger.unexplained_hole(inner.seq, stream_first_seq=first_seq):
            await self._fill_hole(ledger, inner.seq, stream_seq, first_seq)
        late, stale_at = self._age(metadata.timestamp)
        verdict = ledger.on_delivery(
            Delivery(inner.seq, inner.keyframe, stream_seq, metadata.num_delivered),
            stream_first_seq=first_seq,
            late=late,
        )
        if trace.isEnabledFor(logging.DEBUG):
            trace.debug("%s #%d stream %d delivery %d p%d e%d: %s %s", inner.source_id,
                        inner.seq, stream_seq, metadata.num_delivered, self.partition,
                        self.epoch, verdict.action.value, verdict.reason or "")
        await self._act(verdict, inner, decoded, message, stale_at=stale_at)

    def _age(self, stored: datetime.datetime | None) -> tuple[bool, float]:
        """For a message stored at ``stored``: whether it is already older than the worker's
        ``max_frame_age_seconds``, and the ``time.monotonic()`` at which it will be."""
        waited = _waited_seconds(stored)
        limit = self.worker.max_frame_age_seconds
        return waited > limit, time.monotonic() + limit - waited

    async def _stream_first_seq(self, ledger: StreamLedger, seq: int) -> int | None:
        """The input stream's first sequence as known, asked again when ``seq`` would show
        a hole the known value does not explain (the broker may have discarded since)."""
        worker = self.worker
        if ledger.unexplained_hole(seq, stream_first_seq=worker.stream_first_seq):
            return await worker.refresh_stream_first_seq()
        return worker.stream_first_seq

    async def _act(
        self,
        verdict: Verdict,
        frame: FrameMessage,
        decoded: Decoded,
        message: Msg | None,
        *,
        decode_only: bool = False,
        stale_at: float | None = None,
    ) -> None:
        worker = self.worker
        for record in verdict.drops:
            worker.record_drop(record, self.partition, self.epoch)
        if verdict.action is Action.DROP or verdict.action is Action.SKIP:
            if message is not None:
                await _ack(message)
            return
        ticket = Ticket(
            frame.source_id,
            frame.seq,
            self.partition,
            self.epoch,
            message,
            decode_only=decode_only or verdict.action is Action.DECODE_ONLY,
            stale_at=stale_at,
        )
        payload = decoded.payload
        if decoded.object_name is not None:
            payload = await worker.fetch_object(decoded)
        await worker.push(ticket, frame, payload)

    async def _end_of_stream(self, eos: EndOfStream, message: Msg, stream_seq: int) -> None:
        trace.debug("%s end #%s stream %d p%d e%d: ledger %s", eos.source_id, eos.last_seq,
                    stream_seq, self.partition, self.epoch, eos.source_id in self.ledgers)
        worker = self.worker
        ledger = self.ledgers.pop(eos.source_id, None)
        if ledger is None and eos.source_id not in self.ended:
            # The end is the first message of the camera since the claim: what the previous
            # owner had in flight cannot be placed any more, count it from the handover point.
            handover = await self._handover_seq(eos.source_id)
            ledger = worker.ledger.stream(eos.source_id, handover_seq=handover)
        if ledger is not None:
            # The frames that never came (discarded, in flight at a previous owner) and those
            # of its takeover window that have not come back now belong to an ended session:
            # count them (a late redelivery is then a duplicate, see `ended`).
            first_seq = (
                worker.stream_first_seq if eos.last_seq is None
                else await self._stream_first_seq(ledger, eos.last_seq + 1)
            )
            records = ledger.on_end_of_stream(eos.last_seq, stream_first_seq=first_seq)
            for record in records:
                worker.record_drop(record, self.partition, self.epoch)
            if records:
                log.info("worker %s: %s ended (partition %d epoch %d), never delivered: %s",
                         worker.worker_id, eos.source_id, self.partition, self.epoch,
                         [(r.first_seq, r.last_seq, r.reason) for r in records])
            worker.ledger.release([eos.source_id])
        self.ended[eos.source_id] = stream_seq
        ticket = Ticket(eos.source_id, -1, self.partition, self.epoch, message, end_of_stream=True)
        await self.worker.end_source(ticket, eos)

    # -- the handover of one camera ----------------------------------------------------------

    async def _take_over(self, first: FrameMessage, first_stream_seq: int) -> StreamLedger:
        """The ledger of a camera seen for the first time since the claim: its handover point,
        and a replay from its last keyframe when that lies before the first delivery."""
        worker = self.worker
        source_id = first.source_id
        handover = await self._handover_seq(source_id)
        ledger = worker.ledger.stream(source_id, handover_seq=handover)
        log.info("worker %s: takes over %s (partition %d epoch %d): handover point %s, first "
                 "delivery #%d (stream %d)%s", worker.worker_id, source_id, self.partition,
                 self.epoch, handover, first.seq, first_stream_seq,
                 "" if ledger.handover_seq == handover else
                 f", reusing a ledger with handover point {ledger.handover_seq}")
        self.ledgers[source_id] = ledger
        keyframe = await self._keyframe_stream_seq(source_id, first_stream_seq)
        if (
            keyframe is not None
            and keyframe < first_stream_seq
            and (handover is None or first.seq > handover)
        ):
            await self._replay(ledger, first.seq, keyframe, first_stream_seq)
        if handover is not None:
            worker.schedule_window_close(self, ledger)
        return ledger

    async def _handover_seq(self, source_id: str) -> int | None:
        """The last seq the previous owner published a result for (-1: none, or the source's
        session ended there); None when it cannot be known (no results stream)."""
        layout = self.worker.layout
        if layout.results_stream is None:
            return None
        try:
            raw = await self.worker.js.get_last_msg(
                layout.results_stream, layout.result_subject(source_id)
            )
        except nats.js.errors.NotFoundError:
            return -1
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            log.warning("worker: handover point of %s unknown: %r", source_id, exc)
            return None
        try:
            last = decode(raw.subject or "", raw.headers, raw.data or b"").message
        except ProtocolError:
            return None
        return last.seq if isinstance(last, ResultMessage) else -1

    async def _keyframe_stream_seq(self, source_id: str, before: int) -> int | None:
        """The stream sequence of the camera's last recorded keyframe at or before ``before``
        (the newest one first, then the bucket's history), None if none is known."""
        keyframes = self.worker.keyframes
        try:
            newest = _position(await keyframes.get(source_id))
            if newest is None or newest <= before:
                return newest
            history = await keyframes.history(source_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError,
                nats.js.errors.NoKeysError):
            return None
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            log.warning("worker: keyframe of %s unknown: %r", source_id, exc)
            return None
        older = [p for p in map(_position, history) if p is not None and p <= before]
        return max(older, default=None)

    async def _replay(
        self, ledger: StreamLedger, until_seq: int, from_stream_seq: int, stop_stream_seq: int
    ) -> None:
        """Read the camera's messages from its keyframe up to the first delivery straight
        from the stream, decoding (and processing what the previous owner did not)."""
        worker = self.worker
        ledger.begin_replay(until_seq=until_seq)
        read = _StreamRead()
        replayed = 0
        async for stream_seq, frame, decoded in self._read_stream(
            ledger.source_id, from_stream_seq, stop_stream_seq, read
        ):
            verdict = ledger.on_replay(Delivery(frame.seq, frame.keyframe, stream_seq))
            replayed += 1
            await self._act(verdict, frame, decoded, None)
        for record in ledger.end_replay(complete=read.complete):
            worker.record_drop(record, self.partition, self.epoch)
        worker.count("replayed", replayed)
        log.info(
            "worker: %s replayed %d frames from its keyframe (handover %s)",
            ledger.source_id,
            replayed,
            ledger.handover_seq,
        )

    async def _fill_hole(
        self, ledger: StreamLedger, seq: int, stream_seq: int, stream_first_seq: int | None
    ) -> None:
        """Before ``seq`` (at ``stream_seq``) is decided with a hole behind it that the
        broker's limits do not explain, look for the missing frames in the stream, between
        the camera's previous live frame and this one, and decide them first, in order.

        JetStream can deliver a frame after a later one of the same consumer: across a
        change of stream or consumer leader, the new leader may hold a frame as delivered
        that never reached this worker and redeliver it only after its ack wait. The frame
        is in the stream all along: read from there it is processed in order, and its late
        redelivery is a duplicate. What is not found stays a counted hole (frames never
        stored: a publisher's sends that timed out during an election, say).

        Not when another worker has claimed the partition since this claim: the missing
        frames were most likely delivered to it (the pin moved while this worker still
        pulled), and deciding them here too would only compute results its fence drops."""
        after, floor = ledger.last_stream_seq, ledger.floor_seq
        if after is None or floor is None:
            return
        if not await self.worker.claim_is_current(self.partition, self.epoch):
            log.info("worker: %s: #%d..%d missing before #%d, and partition %d has a newer "
                     "claim than %d: left as a hole", ledger.source_id, floor + 1, seq - 1,
                     seq, self.partition, self.epoch)
            return
        read = _StreamRead()
        found = 0
        async for at, frame, decoded in self._read_stream(
            ledger.source_id, after + 1, stream_seq, read
        ):
            decided = ledger.floor_seq
            if decided is None or not decided < frame.seq < seq:
                continue  # a repeat of an older frame, or one the live flow has passed
            found += 1
            late, stale_at = self._age(read.stored_at)
            verdict = ledger.on_delivery(
                Delivery(frame.seq, frame.keyframe, at, delivery_count=0),  # not delivered
                stream_first_seq=stream_first_seq,
                late=late,
            )
            trace.debug("%s #%d stream %d from the stream p%d e%d: %s %s", frame.source_id,
                        frame.seq, at, self.partition, self.epoch, verdict.action.value,
                        verdict.reason or "")
            await self._act(verdict, frame, decoded, None, stale_at=stale_at)
        self.worker.count("hole_filled", found)
        log.info("worker: %s: #%d..%d missing before #%d; %d of them found in the stream%s",
                 ledger.source_id, floor + 1, seq - 1, seq, found,
                 "" if read.complete else " (read cut short)")

    async def _read_stream(
        self, source_id: str, from_stream_seq: int, stop_stream_seq: int, read: _StreamRead
    ) -> AsyncIterator[tuple[int, FrameMessage, Decoded]]:
        """The camera's frames stored at stream sequences ``from_stream_seq`` up to (not
        including) ``stop_stream_seq``, in stream order, read straight from the stream
        (direct gets by subject). ``read.complete`` turns False when a read fails; messages
        that do not decode are passed over."""
        worker = self.worker
        layout = worker.layout
        subject = layout.partition_subject(self.partition, source_id)
        cursor = from_stream_seq
        while cursor < stop_stream_seq:
            try:
                raw = await worker.js.get_msg(
                    layout.input_stream, seq=cursor, subject=subject, next=True
                )
            except nats.js.errors.NotFoundError:
                return
            except (nats.errors.Error, asyncio.TimeoutError) as exc:
                log.warning("worker: reading %s from the stream cut short: %r", source_id, exc)
                read.complete = False
                return
            if raw.seq is None or raw.seq >= stop_stream_seq:
                return
            cursor = raw.seq + 1
            try:
                decoded = decode(raw.subject or subject, raw.headers, raw.data or b"")
            except ProtocolError:
                continue
            frame = decoded.message
            if isinstance(frame, FrameMessage):
                read.stored_at = raw.time
                yield raw.seq, frame, decoded


class _StreamRead:
    """How a read straight from the stream went (see ``OwnedPartition._read_stream``)."""

    def __init__(self) -> None:
        self.complete = True
        self.stored_at: datetime.datetime | None = None
        """When the message last yielded was stored (None: not said)."""


def _waited_seconds(stored: datetime.datetime | None) -> float:
    """How long a message stored at ``stored`` has been in the stream (by the server's
    clock: its timestamp); 0 when not known."""
    return 0.0 if stored is None else time.time() - stored.timestamp()


def _position(entry: Any) -> int | None:
    try:
        return decode_keyframe_position(entry.value or b"").stream_seq
    except ProtocolError:
        return None


async def _ack(message: Msg) -> None:
    with contextlib.suppress(nats.errors.Error):
        await message.ack()


def drop_record_json(record: DropRecord, worker_id: str, partition: int, epoch: int) -> bytes:
    """The body of a drop record on ``<prefix>.drop.<source_id>``."""
    body: dict[str, Any] = {
        "source_id": record.source_id,
        "first_seq": record.first_seq,
        "last_seq": record.last_seq,
        "reason": record.reason,
        "worker": worker_id,
        "partition": partition,
        "epoch": epoch,
    }
    return json.dumps(body).encode()
