"""A worker: one pipeline fed by the partitions of the input stream this process owns.

Workers find each other by heartbeats on ``<prefix>.workers.heartbeat`` and own partitions
by bounded-load rendezvous hashing over the workers that said they are ready
(:class:`~torchstream.nats._assignment.Membership`); each pulls only what it owns, as the
pinned client of those partitions' consumers (see :mod:`torchstream.nats._partition`).
Every result goes to ``<prefix>.out.<source_id>`` with the worker, partition and claim
epoch in its headers; every frame that yields none is counted by reason and published as a
drop record on ``<prefix>.drop.<source_id>``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from torchstream._draw import AnnotationStyle
from torchstream._gc import freeze_startup_heap
from torchstream._types import Sink, Stage
from torchstream.nats._assignment import Membership
from torchstream.nats._connection import close_quietly, connect
from torchstream.nats._emit import Emitter
from torchstream.nats._errors import LayoutError
from torchstream.nats._fence import StallWatchdog
from torchstream.nats._intake import Intake
from torchstream.nats._jsapi import JetStreamApi
from torchstream.nats._layout import Layout, _partitions_of
from torchstream.nats._ledger import DropRecord, Ledger, StreamLedger
from torchstream.nats._ownership import Ownership
from torchstream.nats._partition import OwnedPartition, drop_record_json
from torchstream.nats._tickets import ResultSink, Ticket
from torchstream.pipeline import Pipeline
from torchstream.pipeline._statistics import PipelineStatistics, StageStatistics
from torchstream.pipeline._tracing import FrameTracer
from torchstream.sources._pushed import PushedSource, decode_threads
from torchstream.sources._video import DecoderChoice

__all__ = ["Worker", "WorkerStatistics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerStatistics:
    """Counts of a worker since it started. ``dropped``: frames without a result, by reason
    (the ledger's, ``fenced``, ``decode_error``, ``pipeline_<reason>``, ``overloaded``)
    plus ``duplicate`` redeliveries; each was published as a drop record (not duplicates)."""

    worker_id: str
    partitions: tuple[int, ...]
    results: int
    results_unstored: int
    decoded_only: int
    dropped: dict[str, int]
    counts: dict[str, int]
    """``claims``, ``takeovers`` (cameras taken over), ``replayed``, ``stalls`` (noticed),
    ``fences`` (stalls or lost links that cost it partitions), ``rejected`` (malformed
    messages), ``leaves`` (partitions handed over gracefully), ``drop_records_resent`` (not
    confirmed stored in time, sent again) and ``drop_frames_unsent`` (frames whose drop
    record was never confirmed)."""
    stages: tuple[StageStatistics, ...] = ()
    """Its pipeline's stages: frames, batches, busy time (empty before :meth:`run`)."""


class Worker(Ownership, Intake):
    """Runs ``stages`` on the frames of the partitions it owns; see the module docstring.

    ``layout``: its ``prefix`` and names; the partition count, pin timeout and ack wait are
    read from the server (run ``torchstream nats init`` first: :class:`LayoutError`
    otherwise). ``heartbeat_timeout_seconds`` (default: the pin timeout) drops a silent
    peer; ``stall_threshold_seconds`` (default: 0.6 x (that timeout - a pull's expiry)):
    when its loop stalls that long (SIGSTOP, a starved machine) it stops emitting and reads
    the partitions' claims: those another worker claimed meanwhile are fenced (what it
    holds of them is dropped, counted ``fenced``; the group gives it partitions again
    later), the others it keeps, since no other worker can have pulled from them.

    :meth:`run` blocks until :meth:`stop` (safe from a signal handler): the worker then
    stops pulling, finishes the frames in flight (at most ``drain_timeout_seconds``),
    publishes and acknowledges them, unpins its partitions and announces that it leaves,
    so its partitions move without losing a frame.

    ``max_frame_age_seconds`` (default: half the input stream's max age): a frame that
    waited in the stream longer is dropped unprocessed, counted ``late``, and so is one that
    grows that old inside the worker before its first stage runs (the pipeline's deadline).
    An overloaded group so sheds its oldest frames itself, at the cost of an acknowledgement,
    and stays ahead of the stream's max age, which would remove frames no worker has seen
    (a camera's last frames and its end of stream included, leaving nothing to tell they
    existed).

    ``decode_threads`` (default :func:`~torchstream.sources._pushed.decode_threads` of the
    device): the threads shared by the cameras' decoders (``Pipeline(shared_source_threads=)``).
    Its start-up heap is frozen out of the garbage collector's reach once the pipeline is
    set up (:func:`~torchstream._gc.freeze_startup_heap`).
    """

    def __init__(
        self,
        servers: str | list[str],
        stages: Sequence[Stage],
        *,
        layout: Layout | None = None,
        worker_id: str | None = None,
        sinks: Sequence[Sink] = (),
        device: str | torch.device = "cpu",
        decoder: DecoderChoice = "auto",
        content: Literal["none", "image"] = "none",
        style: AnnotationStyle | None = None,
        heartbeat_timeout_seconds: float | None = None,
        stall_threshold_seconds: float | None = None,
        pull_batch: int = 64,
        drain_timeout_seconds: float = 10.0,
        max_queued: int = 4096,
        max_frame_age_seconds: float | None = None,
        decode_threads: int | None = None,
        tracer: FrameTracer | None = None,
    ) -> None:
        if heartbeat_timeout_seconds is not None and heartbeat_timeout_seconds <= 0:
            raise ValueError(
                f"heartbeat_timeout_seconds must be > 0, got {heartbeat_timeout_seconds}"
            )
        if stall_threshold_seconds is not None and stall_threshold_seconds <= 0:
            raise ValueError(f"stall_threshold_seconds must be > 0, got {stall_threshold_seconds}")
        if pull_batch < 1:
            raise ValueError(f"pull_batch must be >= 1, got {pull_batch}")
        if max_frame_age_seconds is not None and max_frame_age_seconds <= 0:
            raise ValueError(f"max_frame_age_seconds must be > 0, got {max_frame_age_seconds}")
        if decode_threads is not None and decode_threads < 1:
            raise ValueError(f"decode_threads must be >= 1, got {decode_threads}")
        if drain_timeout_seconds <= 0:
            raise ValueError(f"drain_timeout_seconds must be > 0, got {drain_timeout_seconds}")
        self.servers = servers
        self.layout = layout or Layout()
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.incarnation = time.time_ns()
        self._stages = list(stages)
        self._sinks = list(sinks)
        self._device = torch.device(device)
        self._decoder: DecoderChoice = decoder
        self._content: Literal["none", "image"] = content
        self._style = style
        self._heartbeat_timeout = heartbeat_timeout_seconds
        self._stall_threshold = stall_threshold_seconds
        self.pull_batch = pull_batch
        self.pull_expires_seconds = 0.25
        self._drain_timeout = drain_timeout_seconds
        self._max_queued = max_queued
        self._decode_threads = decode_threads
        self._max_frame_age = max_frame_age_seconds
        self._tracer = tracer
        self.ledger = Ledger()
        self.stream_first_seq: int | None = None
        self.ready = threading.Event()
        """Set once the pipeline is up and the worker has joined the group."""
        self._owned: dict[int, OwnedPartition] = {}
        self._claims: dict[int, int] = {}
        self._sources: dict[str, PushedSource] = {}
        self._starter = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="ts/nats-source-starter"
        )
        self._in_flight: collections.Counter[int] = collections.Counter()
        self._dropped: collections.Counter[str] = collections.Counter()
        self._counts: collections.Counter[str] = collections.Counter()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._pipeline: Pipeline | None = None
        self._emitter: Emitter | None = None
        self._drops_stored = True  # the results stream keeps drop records (read at start)
        self._settle_until = 0.0
        self._closing: set[asyncio.Future[None]] = set()
        self._asking_first_seq: asyncio.Future[int | None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._link_timeout = self.layout.pin_timeout_seconds

    # -- the outside --------------------------------------------------------------------

    def run(self) -> WorkerStatistics:
        """Serve until :meth:`stop`; returns the final statistics."""
        sink = ResultSink(
            self.layout.result_subject,
            self.worker_id,
            self._settled_from_thread,
            content=self._content,
            style=self._style,
        )
        with Pipeline(
            self._stages,
            [sink, *self._sinks],
            device=self._device,
            tracer=self._tracer,
            on_drop=sink.dropped,
            shared_source_threads=self._decode_threads or decode_threads(self._device),
        ) as pipeline:
            self._pipeline = pipeline
            freeze_startup_heap()
            try:
                asyncio.run(self._main())
            finally:
                self._starter.shutdown(wait=True)
            for source in self._sources.values():
                source.end()
            pipeline.wait(self._drain_timeout)
        return self.statistics()

    def stop(self) -> None:
        """Leave gracefully (see the class docstring); safe from any thread and from a
        signal handler."""
        self._stopping = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def pipeline_statistics(self) -> PipelineStatistics | None:
        """Its pipeline's own statistics (sources, drops by reason, stages, sinks); None
        before :meth:`run` has set the pipeline up."""
        return self._pipeline.statistics() if self._pipeline is not None else None

    def statistics(self) -> WorkerStatistics:
        stats = self.ledger.statistics()
        pipeline = self.pipeline_statistics()
        emitter = self._emitter
        return WorkerStatistics(
            worker_id=self.worker_id,
            partitions=tuple(sorted(self._owned)),
            results=emitter.published if emitter else 0,
            results_unstored=emitter.unstored if emitter else 0,
            decoded_only=stats.decoded_only,
            dropped=dict(self._dropped),
            counts={
                **self._counts,
                "drop_records_resent": emitter.drops_resent if emitter else 0,
                "drop_frames_unsent": emitter.drops_unsent if emitter else 0,
            },
            stages=pipeline.stages if pipeline is not None else (),
        )

    # -- the event loop -----------------------------------------------------------------

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.connection = await connect(self.servers, name=f"torchstream-worker-{self.worker_id}")
        try:
            # Heartbeats go on a connection of their own: on the data connection they wait
            # behind the results and acknowledgements in its buffers (measured on a busy
            # 2-core machine: up to 2 s), and peers take the worker for dead.
            self.control = await connect(
                self.servers, name=f"torchstream-worker-{self.worker_id}-heartbeats"
            )
            try:
                await self._serve()
            finally:
                await close_quietly(self.control)
        finally:
            await close_quietly(self.connection)

    async def _serve(self) -> None:
        self.api = JetStreamApi(self.connection)
        self.js = self.connection.jetstream()
        await self._discover_layout()
        self.keyframes = await self.js.key_value(self.layout.keyframes_bucket)
        self._claims_kv = await self.js.key_value(self.layout.workers_bucket)
        timeout = self._heartbeat_timeout or self.layout.pin_timeout_seconds
        self.pull_expires_seconds = min(0.25, self.layout.pin_timeout_seconds / 4)
        threshold = self._stall_threshold or 0.6 * (
            min(timeout, self.layout.pin_timeout_seconds) - self.pull_expires_seconds
        )
        self._interval = timeout / 4
        self._link_timeout = timeout
        self._watchdog = StallWatchdog(
            stall_threshold_seconds=threshold, now_seconds=time.monotonic()
        )
        self._membership = Membership(
            partitions=self.layout.partitions, heartbeat_timeout_seconds=timeout,
            viewer=self.worker_id,
        )
        emitter = self._emitter = Emitter(
            self.connection,
            drop_subject_of=lambda s: f"{self.layout.prefix}.drop.{s}",
            may_emit=self._may_emit,
            on_drop=self.record_drop,
            on_done=self._done,
            stored=self.layout.results_stream is not None,
            drops_stored=self._drops_stored,
        )
        await emitter.start()
        subject = f"{self.layout.prefix}.workers.heartbeat"
        subscription = await self.control.subscribe(subject, cb=self._on_heartbeat)
        background = [
            asyncio.create_task(self._heartbeats(subject)),
            asyncio.create_task(self._refresh_stream_info()),
        ]
        # Hear the peers before owning anything, or this worker would pull (and pin) what
        # they own.
        self._settle_until = time.monotonic() + 2 * self._interval
        self.ready.set()
        assert self._wake is not None
        while not self._stopping:
            await self._rebalance()
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
        for partition, owned in sorted(self._owned.items()):  # what it leaves, for the record
            task = owned.task
            log.info(
                "worker %s: leaves partition %d (epoch %d): %d frames in flight (room %d), "
                "pin %s, pull loop %s", self.worker_id, partition, owned.epoch,
                self._in_flight[partition], self.room(partition), owned.puller.pin_id,
                "running" if task is not None and not task.done() else "ended",
            )
        # Announce the leave first: the others ask for the pins (and get them as soon as
        # each partition is drained and unpinned) instead of learning it afterwards.
        await self._heartbeat(subject, leaving=True)
        await asyncio.gather(*(self._release(p) for p in list(self._owned)))
        await self.connection.flush()
        await self.control.flush()
        for task in background:
            task.cancel()
        await subscription.unsubscribe()
        await emitter.close()

    async def _discover_layout(self) -> None:
        layout = self.layout
        info = await self.api.stream_info(layout.input_stream)
        if info is None:
            raise LayoutError(f"no stream {layout.input_stream}: run `torchstream nats init`")
        partitions = _partitions_of(info["config"]) or layout.partitions
        consumer = await self.api.consumer_info(layout.input_stream, layout.consumer_name(0))
        changes: dict[str, Any] = {"partitions": partitions}
        max_age_ns = int(info["config"].get("max_age", 0))
        if max_age_ns > 0:
            changes["max_age_seconds"] = max_age_ns / 1e9
        if consumer is not None:
            config = consumer["config"]
            changes["pin_timeout_seconds"] = config.get("priority_timeout", 1e9) / 1e9
            changes["ack_wait_seconds"] = config.get("ack_wait", 30e9) / 1e9
            if int(config.get("max_ack_pending", 0)) > 0:
                changes["max_ack_pending"] = int(config["max_ack_pending"])
        if layout.results_stream is not None:
            results = await self.api.stream_info(layout.results_stream)
            if results is None:
                changes["results_stream"] = None
            else:
                subjects = results["config"].get("subjects") or []
                self._drops_stored = f"{layout.prefix}.drop.*" in subjects
                if not self._drops_stored:
                    log.warning(
                        "worker %s: stream %s does not keep drop records (made by an earlier "
                        "version): they go out as plain messages; run `torchstream nats init`",
                        self.worker_id, layout.results_stream,
                    )
        self.layout = replace(layout, **changes)

    @property
    def max_frame_age_seconds(self) -> float:
        """Frames that waited longer in the stream are dropped as ``late``: as given, else
        half the input stream's max age (the server's, once read)."""
        if self._max_frame_age is not None:
            return self._max_frame_age
        return self.layout.max_age_seconds / 2

    # -- frames out (see _intake for frames in, _ownership for the group) ---------------

    def _settled_from_thread(self, ticket: Ticket) -> None:
        loop = self._loop
        if loop is not None and self._emitter is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._emitter.settle, ticket)

    async def _may_emit(self, ticket: Ticket) -> bool:
        if not self._watchdog.may_emit(time.monotonic()):
            await self.after_stall()  # its partition kept or fenced: the claim tells
        return self._claims.get(ticket.partition) == ticket.epoch

    def _done(self, ticket: Ticket) -> None:
        if ticket.message is not None and self._in_flight[ticket.partition] > 0:
            self._in_flight[ticket.partition] -= 1
            owned = self._owned.get(ticket.partition)
            if owned is not None:
                owned.room.set()

    def room(self, partition: int) -> int:
        """How many more frames ``partition`` may bring in: the in-flight budget
        (``max_ack_pending``) minus its frames delivered and not yet acknowledged. The
        server's own count is not enough: it forgets a delivered message as soon as the
        stream's limits remove it, and would deliver more to a worker that is behind."""
        return self.layout.max_ack_pending - self._in_flight[partition]

    def record_drop(self, record: DropRecord, partition: int, epoch: int) -> None:
        """Count a drop and publish it (duplicates are only counted)."""
        self._dropped[record.reason] += record.frames
        if record.reason != "duplicate" and self._emitter is not None:
            self._emitter.publish_drop(
                record, drop_record_json(record, self.worker_id, partition, epoch)
            )

    def count_window(self, owned: OwnedPartition, ledger: StreamLedger, why: str) -> None:
        """Close ``ledger``'s takeover window (``why``: its timer, the partition's release
        or fence, the camera's end of stream) and count its frames that never came back."""
        records = ledger.close_window()
        for record in records:
            self.record_drop(record, owned.partition, owned.epoch)
        if records:
            log.info("worker %s: %s takeover window closed on %s (partition %d epoch %d): %s",
                     self.worker_id, ledger.source_id, why, owned.partition, owned.epoch,
                     [(r.first_seq, r.last_seq) for r in records])

    def schedule_window_close(self, owned: OwnedPartition, ledger: StreamLedger) -> None:
        """Count the takeover window's frames that never came back, once they cannot."""
        self._counts["takeovers"] += 1
        delay = self.layout.ack_wait_seconds + self.layout.pin_timeout_seconds

        def close() -> None:
            if (
                owned.ledgers.get(ledger.source_id) is ledger
                and self._owned.get(owned.partition) is owned
            ):
                self.count_window(owned, ledger, "its timer")
            else:
                log.info("worker %s: %s takeover window left to its release (partition %d "
                         "epoch %d)", self.worker_id, ledger.source_id, owned.partition,
                         owned.epoch)

        assert self._loop is not None
        self._loop.call_later(delay, close)
