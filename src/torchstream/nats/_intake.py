"""The way in of a worker: frames fed to their camera's source in the pipeline, ends of
stream, images fetched from the object store.

A mixin of :class:`~torchstream.nats._worker.Worker`, kept apart to keep each file short:
the attributes it uses are the worker's (declared below for the type checker). Everything
here runs on the worker's event loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import time
from typing import Any

import nats.errors
from nats.js.client import JetStreamContext

from torchstream._errors import ClosedResourceError, OverloadedError
from torchstream.nats._emit import Emitter
from torchstream.nats._layout import Layout
from torchstream.nats._tickets import Ticket
from torchstream.nats._wire import Decoded, check_object, encode
from torchstream.pipeline import Pipeline
from torchstream.sources._pushed import PushedSource
from torchstream.sources._video import DecoderChoice
from torchstream.transport._protocol import EndOfStream, FrameMessage
from torchstream.transport._pushing import push_encoded

__all__ = ["Intake"]

log = logging.getLogger("torchstream.nats._worker")


class Intake:
    """Frames in, for a :class:`~torchstream.nats._worker.Worker`."""

    layout: Layout
    js: JetStreamContext
    _pipeline: Pipeline | None
    _emitter: Emitter | None
    _sources: dict[str, PushedSource]
    _in_flight: collections.Counter[int]
    _counts: collections.Counter[str]
    _decoder: DecoderChoice
    _max_queued: int
    _starter: concurrent.futures.ThreadPoolExecutor

    def count(self, name: str, n: int = 1) -> None:
        self._counts[name] += n

    async def push(self, ticket: Ticket, frame: FrameMessage, payload: memoryview | None) -> None:
        """Feed one frame to the camera's source (made on its first frame)."""
        assert self._emitter is not None
        description = frame.payload
        if payload is None or description is None:
            self.count("rejected")
            if ticket.message is not None:
                await ticket.message.ack()
            return
        common: dict[str, Any] = {
            "traceparent": frame.traceparent,
            "seq": frame.seq,
            "original": ticket,
            "timeout": 0.0,
            "attributes": dict(frame.metadata.attributes) if frame.metadata else {},
        }
        if ticket.decode_only:
            common["deadline_monotonic"] = 0.0  # decoded, then dropped before any stage
        elif ticket.stale_at is not None:
            common["deadline_monotonic"] = ticket.stale_at  # too old by then: dropped, late
        for attempt in (1, 2):
            source = await self._source(frame.source_id)
            try:
                if not push_encoded(source, frame, payload, **common):
                    raise ValueError("raw pixels are not taken over NATS")
            except ClosedResourceError:
                self._sources.pop(frame.source_id, None)
                if attempt == 1:
                    continue
                ticket.state, ticket.reason = "dropped", "source_failed"
            except (OverloadedError, ValueError) as exc:
                ticket.state, ticket.reason = "dropped", "overloaded"
                log.warning("worker: %s #%d not taken: %s", frame.source_id, frame.seq, exc)
            break
        if ticket.decode_only:
            self._counts["decode_only"] += 1
            return
        if ticket.message is not None:
            self._in_flight[ticket.partition] += 1
        self._emitter.add(ticket)
        if ticket.state != "pending":
            self._emitter.settle(ticket)

    async def _source(self, source_id: str) -> PushedSource:
        source = self._sources.get(source_id)
        if source is not None and not source.ended:
            return source
        pipeline = self._pipeline
        assert pipeline is not None
        deadline = time.monotonic() + 30.0
        while source_id in pipeline.sources() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # the previous session still drains
        source = PushedSource(source_id, decoder=self._decoder, max_queued=self._max_queued)
        self._sources[source_id] = source
        # Its thread starts on the starter thread, not here: Thread.start waits until the
        # new thread runs, and a takeover of hundreds of cameras on a busy machine would
        # hold the loop (its pulls and heartbeats) long enough to look like a stall. Frames
        # pushed meanwhile queue in the source.
        starting = asyncio.get_running_loop().run_in_executor(
            self._starter, self._start_source, pipeline, source
        )
        starting.add_done_callback(functools.partial(self._source_started, source))
        return source

    @staticmethod
    def _start_source(pipeline: Pipeline, source: PushedSource) -> None:
        # A session of the camera released while its own start was still queued ends at
        # once (it was ended or closed before it ran): wait for it, then start this one.
        pipeline.wait_source(source.source_id, 30.0)
        pipeline.add_source(source)

    def _source_started(self, source: PushedSource, started: asyncio.Future[None]) -> None:
        error = None if started.cancelled() else started.exception()
        if error is None:
            return
        log.warning("worker: source %s did not start: %r", source.source_id, error)
        source.close()
        if self._sources.get(source.source_id) is source:
            del self._sources[source.source_id]
        if self._emitter is not None:
            self._emitter.drain(source.source_id, "source_failed")

    async def end_source(self, ticket: Ticket, eos: EndOfStream) -> None:
        """A camera's end of stream: its source ends, the end goes out after its results."""
        assert self._emitter is not None
        source = self._sources.pop(eos.source_id, None)
        if source is not None:
            source.end()
        encoded = encode(self.layout.result_subject(eos.source_id), eos)
        ticket.encoded, ticket.state = encoded, "result"
        self._in_flight[ticket.partition] += 1
        self._emitter.after(ticket)

    async def fetch_object(self, decoded: Decoded) -> memoryview | None:
        store = await self.js.object_store(self.layout.objects_bucket)
        try:
            result = await store.get(decoded.object_name or "")
        except nats.errors.Error as exc:
            log.warning("worker: image %s unavailable: %r", decoded.object_name, exc)
            return None
        return check_object(decoded, result.data or b"")
