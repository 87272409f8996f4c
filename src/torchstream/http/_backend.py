"""What answers the HTTP front end's frames: a pipeline in this process, or a module reached
through the client SDK. Both are used from the event loop's thread only."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import torch

from torchstream._errors import ClosedResourceError, OverloadedError, PipelineError
from torchstream._gc import freeze_startup_heap
from torchstream._types import Sink, Stage
from torchstream.frame import Frame
from torchstream.http._images import CheckedImage, RequestFailed
from torchstream.pipeline import Pipeline
from torchstream.pipeline._session import Session
from torchstream.pipeline._statistics import PipelineHealth
from torchstream.pipeline._tracing import FrameTracer
from torchstream.sources._pushed import PushedSource, decode_threads

__all__ = ["Backend", "InProcessBackend", "Outcome", "RequestFailed"]

log = logging.getLogger(__name__)

WARMUP_SOURCE_ID = "_warmup"


def _warmup_image() -> CheckedImage:
    """A 640x480 JPEG (a horizontal grey ramp) for warming a pipeline up."""
    from torchstream.sinks._images import encode_picture

    ramp = torch.linspace(0, 255, 640, dtype=torch.float32).to(torch.uint8)
    picture = ramp.view(1, 640, 1).expand(480, 640, 3).contiguous()
    return CheckedImage(encode_picture(picture, "jpg"), "jpeg", 640, 480)


@dataclass(frozen=True)
class Outcome:
    """A frame's result: its metadata (no pixels) and where its time went."""

    frame: Frame
    pipeline_seconds: float | None
    """From entering the pipeline (decoded) to reaching the sinks; None when unknown."""


class Backend(Protocol):
    """The pipeline behind the front end.

    ``submit`` never blocks: it returns a future resolved with the :class:`Outcome`, or
    failed with :class:`RequestFailed`; cancelling the future abandons the frame (with
    ``deadline_monotonic`` passed, the pipeline skips it when no stage started on it).
    ``end_source`` ends a source's session (a websocket closed)."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def health(self) -> PipelineHealth: ...

    def submit(
        self,
        source_id: str,
        image: CheckedImage,
        *,
        deadline_monotonic: float,
        traceparent: str,
    ) -> asyncio.Future[Outcome]: ...

    async def end_source(self, source_id: str) -> None: ...

    def status(self) -> dict[str, Any]: ...


class _Ticket:
    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[Outcome] = loop.create_future()


def _settle(future: asyncio.Future[Outcome], value: Outcome | BaseException) -> None:
    """On the loop's thread: resolve unless the waiter gave up meanwhile."""
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class _Answers:
    """The in-process backend's sink: hands each frame's metadata to the request waiting
    for it (on the sink's thread; the future is settled on the loop's thread)."""

    name = "http-answers"

    def __init__(self, tickets: _Tickets) -> None:
        self._tickets = tickets

    def write(self, frame: Frame) -> None:
        ticket = self._tickets.pop(frame.source_id, frame.seq)
        if ticket is None:  # its request gave up (deadline) after the frame started
            return
        entered = frame.__dict__.get("_t_in")
        pipeline = None if entered is None else time.monotonic() - entered
        # A copy of the metadata only: the surface (maybe GPU memory) stays with the frame.
        outcome = Outcome(msgspec.structs.replace(frame), pipeline)
        ticket.loop.call_soon_threadsafe(_settle, ticket.future, outcome)

    def end_session(self, session: Session) -> None:
        pass

    def close(self) -> None:
        self._tickets.fail_all(RequestFailed(503, "the pipeline stopped"))


class _Tickets:
    """Waiting requests by (source id, seq), shared by the loop and the pipeline's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[tuple[str, int], _Ticket] = {}

    def add(self, source_id: str, seq: int, ticket: _Ticket) -> None:
        with self._lock:
            self._waiting[(source_id, seq)] = ticket

    def pop(self, source_id: str, seq: int) -> _Ticket | None:
        with self._lock:
            return self._waiting.pop((source_id, seq), None)

    def fail(self, source_id: str, seq: int, error: RequestFailed) -> None:
        ticket = self.pop(source_id, seq)
        if ticket is not None:
            ticket.loop.call_soon_threadsafe(_settle, ticket.future, error)

    def fail_all(self, error: RequestFailed) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for ticket in waiting.values():
            ticket.loop.call_soon_threadsafe(_settle, ticket.future, error)

    def __len__(self) -> int:
        return len(self._waiting)


_DROP_STATUS = {"stage_error": 500, "deadline": 504}


class InProcessBackend:
    """A :class:`~torchstream.Pipeline` of ``stages`` in this process, fed by one
    :class:`~torchstream.sources.PushedSource` per source id (``/v1/infer`` and jobs share
    one; each websocket session has its own). Images decode on the source's thread (nvJPEG
    batches on CUDA). ``start`` loads the models and sends one warm-up image through the
    pipeline; only then is the backend ready. ``sinks``: more sinks beside the answers (a
    JSON lines log of every result, say)."""

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        device: torch.device | str = "cpu",
        sinks: Sequence[Sink] = (),
        tracer: FrameTracer | None = None,
        max_queued: int = 1024,
        warmup_timeout_seconds: float = 600.0,
    ) -> None:
        self._stages = list(stages)
        self._device = torch.device(device)
        self._tickets = _Tickets()
        self._sinks: list[Sink] = [_Answers(self._tickets), *sinks]
        self._tracer = tracer
        self._max_queued = max_queued
        self._warmup_timeout = warmup_timeout_seconds
        self._pipeline: Pipeline | None = None
        self._sources: dict[str, PushedSource] = {}
        self._seqs: dict[str, int] = {}
        self._ready = False
        self._closing = False
        self._failure: str | None = None

    @property
    def pipeline(self) -> Pipeline | None:
        return self._pipeline

    async def start(self) -> None:
        pipeline = Pipeline(
            self._stages, self._sinks, device=self._device, tracer=self._tracer,
            on_drop=self._dropped, shared_source_threads=decode_threads(self._device),
        )
        try:
            # Setting the stages up loads the models: off the event loop.
            await asyncio.to_thread(pipeline.__enter__)
        except PipelineError as exc:
            self._failure = str(exc)
            raise
        self._pipeline = pipeline
        freeze_startup_heap()
        try:
            await self._warm_up()
        except BaseException:
            await self.aclose()
            raise
        self._ready = True

    async def _warm_up(self) -> None:
        """One picture through every stage (first CUDA kernels, cuDNN autotuning, lazy
        allocations) before the first request is admitted."""
        future = self.submit(
            WARMUP_SOURCE_ID, _warmup_image(),
            deadline_monotonic=time.monotonic() + self._warmup_timeout,
            traceparent="",
        )
        try:
            await asyncio.wait_for(future, self._warmup_timeout)
        except RequestFailed as exc:
            self._failure = f"warm-up failed: {exc.message}"
            raise PipelineError(self._failure) from exc
        except asyncio.TimeoutError:
            self._failure = f"warm-up took longer than {self._warmup_timeout} s"
            raise PipelineError(self._failure) from None
        await self.end_source(WARMUP_SOURCE_ID)

    async def aclose(self) -> None:
        """End every source, finish what is in flight, stop the pipeline (idempotent)."""
        self._closing = True
        self._ready = False
        pipeline, self._pipeline = self._pipeline, None
        for source in self._sources.values():
            source.end()
        self._sources.clear()
        if pipeline is not None:
            await asyncio.to_thread(pipeline.close)
        self._tickets.fail_all(RequestFailed(503, "the pipeline stopped"))

    def health(self) -> PipelineHealth:
        pipeline = self._pipeline
        if self._failure is not None:
            return PipelineHealth(False, False, self._failure)
        if pipeline is None:
            state = "stopped" if self._closing else "starting: loading the models"
            return PipelineHealth(not self._closing, False, state)
        health = pipeline.health()
        if not health.alive:
            return health
        if self._closing:
            return PipelineHealth(True, False, "stopping: finishing what is in flight")
        if not self._ready:
            return PipelineHealth(True, False, "warming up")
        return PipelineHealth(True, True, "models loaded and warm")

    def submit(
        self,
        source_id: str,
        image: CheckedImage,
        *,
        deadline_monotonic: float,
        traceparent: str,
    ) -> asyncio.Future[Outcome]:
        ticket = _Ticket(asyncio.get_running_loop())
        if self._pipeline is None or self._closing:
            ticket.future.set_exception(RequestFailed(503, "the pipeline is not running"))
            return ticket.future
        seq = self._seqs.get(source_id, 0)
        self._seqs[source_id] = seq + 1
        self._tickets.add(source_id, seq, ticket)
        for attempt in (1, 2):
            source = self._source(source_id)
            try:
                source.push_image(
                    image.data, seq=seq, traceparent=traceparent or None,
                    deadline_monotonic=deadline_monotonic, timeout=0.0,
                )
                break
            except ClosedResourceError:  # the source ended meanwhile (failed): a new one
                self._sources.pop(source_id, None)
                if attempt == 2:
                    self._tickets.fail(source_id, seq, RequestFailed(503, "source closed"))
            except OverloadedError as exc:
                self._tickets.fail(source_id, seq, RequestFailed(503, str(exc)))
                break
            except RequestFailed as exc:
                self._tickets.fail(source_id, seq, exc)
                break
        return ticket.future

    def _source(self, source_id: str) -> PushedSource:
        source = self._sources.get(source_id)
        if source is not None and not source.ended:
            return source
        pipeline = self._pipeline
        assert pipeline is not None

        def failed(seq: int, message: str) -> None:
            self._tickets.fail(
                source_id, seq, RequestFailed(422, f"the image does not decode: {message}")
            )

        source = PushedSource(source_id, max_queued=self._max_queued, on_error=failed)
        try:
            pipeline.add_source(source)
        except ValueError:  # its previous session is still finishing
            raise RequestFailed(409, f"source {source_id!r} is still finishing") from None
        self._sources[source_id] = source
        return source

    def _dropped(self, frame: Frame, reason: str) -> None:
        status = _DROP_STATUS.get(reason, 503)
        session = frame.session
        detail = session.errors[-1] if session is not None and session.errors else reason
        message = (
            f"a stage failed on this image: {detail}" if reason == "stage_error"
            else f"the pipeline dropped the frame ({reason})"
        )
        self._tickets.fail(frame.source_id, frame.seq, RequestFailed(status, message))

    async def end_source(self, source_id: str) -> None:
        """End the source's session after what it has queued; returns once its id is free
        for a new session."""
        source = self._sources.pop(source_id, None)
        self._seqs.pop(source_id, None)
        pipeline = self._pipeline
        if source is not None:
            source.end()
            if pipeline is not None:
                await asyncio.to_thread(pipeline.wait_source, source_id, 60.0)

    def status(self) -> dict[str, Any]:
        pipeline = self._pipeline
        if pipeline is None:
            return {"running": False}
        stats = pipeline.statistics()
        return {
            "running": True,
            "waiting": len(self._tickets),
            "frames_in": stats.frames_in,
            "frames_out": stats.frames_out,
            "dropped": stats.dropped,
            "sessions_open": stats.sessions_open,
            "latency_seconds_p50": stats.latency_seconds_p50,
            "latency_seconds_p95": stats.latency_seconds_p95,
            "sources": sorted(s for s in self._sources if s != WARMUP_SOURCE_ID),
        }
