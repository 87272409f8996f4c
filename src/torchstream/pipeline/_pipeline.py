"""The runtime: sources, stages and sinks on their own threads, joined by bounded channels."""

from __future__ import annotations

import bisect
import collections
import contextlib
import logging
import statistics as pystats
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torchstream._errors import (
    ClosedResourceError,
    PipelineError,
    SourceError,
    StageError,
)
from torchstream._types import Sink, Source, Stage
from torchstream.frame import Frame
from torchstream.pipeline._attempt import run_batch
from torchstream.pipeline._batcher import Batcher, BatchPolicy
from torchstream.pipeline._channel import Channel, EndOfChannel
from torchstream.pipeline._session import EndReason, Session
from torchstream.pipeline._statistics import (
    BATCH_SECONDS_BUCKETS,
    PipelineHealth,
    PipelineStatistics,
    SinkStatistics,
    SourceStatistics,
    StageStatistics,
)
from torchstream.pipeline._tracing import FrameTracer

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class _SessionEnd:
    """Control marker: the session's last frame has gone before it. Never dropped."""

    session: Session


_Item = Frame | _SessionEnd

_KEEP_FINISHED = 256
"""Finished sources whose statistics a pipeline keeps (the newest)."""

_BURST = 256
"""Most items a consumer thread takes from its channel at once."""


def _droppable(item: _Item) -> bool:
    return isinstance(item, Frame)


@dataclass(eq=False)
class _SourceState:
    source: Source
    session: Session
    sessions: int = 1
    frames_in: int = 0
    frames_out: int = 0
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: list[str] = field(default_factory=list)
    running: bool = True
    stop: bool = False
    ends_delivered: int = 0
    first_frame_seconds: float | None = None
    last_frame_seconds: float | None = None
    last_activity_seconds: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None


@dataclass(eq=False)
class _StageCounters:
    frames: int = 0
    batches: int = 0
    errors: int = 0
    busy_seconds: float = 0.0
    oom_splits: int = 0
    dropped: int = 0
    batch_seconds: list[int] = field(
        default_factory=lambda: [0] * (len(BATCH_SECONDS_BUCKETS) + 1)
    )


class Pipeline:
    """Frames from any number of sources through a chain of stages into sinks.

    Every source, stage and sink runs on its own named thread (``ts/source/<id>``,
    ``ts/stage/<name>``, ``ts/sink/<name>``); they talk through bounded channels. Frames of
    all sources share each stage's queue and are batched across streams by the stage's
    ``batch_policy``; the frames of one source reach every stage and sink in order.

    Use it as a context manager: ``__enter__`` sets the stages up on their threads (and
    raises if a setup fails), ``add_source`` starts reading a source, ``wait`` blocks until
    every source has ended and its last frame has passed the stages, ``__exit__`` drains the
    sinks and joins every thread. Closing while sources still run stops them; their sessions
    end with reason ``closed``.

    Backpressure is per source: a ``block`` source (files) waits when its share of the input
    queue is full; a ``latest`` source (live streams) drops its own oldest queued frame,
    counted as ``queue_full``. A stage that raises drops the failing frames (``stage_error``)
    and records the error on their session; other frames and sources go on. A batch that runs
    out of memory is split in halves and retried before any frame is given up. Every frame
    that enters leaves as a result or as a counted drop: see :meth:`statistics`.

    ``tracer`` (see :class:`~torchstream.pipeline.FrameTracer`; OpenTelemetry's is
    ``torchstream.telemetry.OtelFrameTracer``) follows sampled frames through the stages.

    ``debug_surfaces=True`` checks, around every stage, that no frame's surface was modified
    in place (pointer, shape, strides and checksums; it costs a pass over each frame): such a
    frame fails with an error naming the stage.
    """

    def __init__(
        self,
        stages: Sequence[Stage] = (),
        sinks: Sequence[Sink] = (),
        *,
        device: torch.device | str = "cpu",
        queue_capacity: int = 16,
        source_queue_capacity: int = 4,
        session_idle_timeout_seconds: float | None = None,
        debug_surfaces: bool = False,
        tracer: FrameTracer | None = None,
    ) -> None:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        sink_names = [s.name for s in sinks]
        if len(set(sink_names)) != len(sink_names):
            raise ValueError(f"sink names must be unique, got {sink_names}")
        if session_idle_timeout_seconds is not None and session_idle_timeout_seconds <= 0:
            raise ValueError(
                "session_idle_timeout_seconds must be > 0 or None, "
                f"got {session_idle_timeout_seconds}"
            )
        self.device = torch.device(device)
        self._debug_surfaces = debug_surfaces
        self._tracer = tracer
        self._stages = list(stages)
        self._sinks = list(sinks)
        self._idle_timeout = session_idle_timeout_seconds
        self._ingress: Channel[_Item] = Channel(
            "ingress",
            capacity=max(1024, source_queue_capacity),
            per_key_capacity=source_queue_capacity,
            droppable=_droppable,
        )
        self._stage_inputs: list[Channel[_Item]] = [self._ingress] + [
            Channel(f"stage/{s.name}", capacity=queue_capacity) for s in self._stages[1:]
        ]
        self._sink_inputs: list[Channel[_Item]] = [
            Channel(f"sink/{s.name}", capacity=queue_capacity, droppable=_droppable)
            for s in self._sinks
        ]
        self._batchers: list[Batcher[Frame]] = [
            Batcher(getattr(s, "batch_policy", None) or BatchPolicy()) for s in self._stages
        ]
        self._stage_counters = [_StageCounters() for _ in self._stages]
        self._sink_counters = [_StageCounters() for _ in self._sinks]
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._sources: dict[str, _SourceState] = {}
        self._sessions_open = 0
        self._frames_in = 0
        self._frames_out = 0
        self._dropped: collections.Counter[str] = collections.Counter()
        self._latencies: collections.deque[float] = collections.deque(maxlen=1024)
        self._threads: list[threading.Thread] = []
        self._crash: BaseException | None = None
        self._state = "new"

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> Pipeline:
        if self._state != "new":
            raise ClosedResourceError("a Pipeline can be entered once")
        self._state = "running"
        ready = [threading.Event() for _ in self._stages]
        setup_errors: list[BaseException] = []
        if not self._stages:
            self._spawn("ts/stage/passthrough", self._run_passthrough)
        for index, stage in enumerate(self._stages):
            self._spawn(
                f"ts/stage/{stage.name}",
                self._run_stage,
                index,
                ready[index],
                setup_errors,
            )
        for index, sink in enumerate(self._sinks):
            self._spawn(f"ts/sink/{sink.name}", self._run_sink, index)
        if self._idle_timeout is not None:
            self._spawn("ts/sessions", self._run_idle_eviction)
        for event in ready:
            event.wait()
        if setup_errors:
            self.close()
            raise PipelineError(f"stage setup failed: {setup_errors[0]!r}") from setup_errors[0]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop sources, drain stages and sinks, join every thread. Idempotent.

        Raises :class:`PipelineError` if a runtime thread crashed.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        with self._changed:
            states = list(self._sources.values())
            for state in states:
                state.stop = True
            self._changed.notify_all()
        for state in states:
            if state.thread is not None:
                state.thread.join()
        self._ingress.close()
        for thread in self._threads:
            thread.join()
        if self._crash is not None:
            raise PipelineError(f"pipeline thread crashed: {self._crash!r}") from self._crash

    def add_source(self, source: Source) -> None:
        """Start reading ``source`` on its own thread. Its id must not be running already."""
        if self._state != "running":
            raise ClosedResourceError("add_source needs a running pipeline (use `with`)")
        source_id = source.source_id
        with self._lock:
            existing = self._sources.get(source_id)
            if existing is not None and existing.running:
                raise ValueError(f"source id {source_id!r} is already running")
            state = _SourceState(source=source, session=self._new_session(source_id, 0))
            if existing is not None:
                state.sessions = existing.sessions + 1
                state.session.index = existing.sessions
                state.ends_delivered = existing.ends_delivered
                del self._sources[source_id]  # re-insert: the dict stays in age order
            self._sources[source_id] = state
            self._forget_finished_sources()
        state.thread = self._spawn(f"ts/source/{source_id}", self._run_source, state)

    def _forget_finished_sources(self) -> None:
        """Keep the statistics of at most ``_KEEP_FINISHED`` finished sources (the newest), so
        a pipeline that sees thousands of short-lived sources does not grow without bound.
        Called with ``self._lock`` held."""
        finished = [
            sid
            for sid, s in self._sources.items()
            if not s.running and s.ends_delivered >= s.sessions
        ]
        for sid in finished[: max(0, len(finished) - _KEEP_FINISHED)]:
            del self._sources[sid]

    def wait(self, timeout_seconds: float | None = None) -> bool:
        """Block until every source has ended and its frames have left the stages.

        Returns False if ``timeout_seconds`` ran out first. Raises :class:`PipelineError` if a
        runtime thread crashed.
        """
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        with self._changed:
            while self._crash is None and (
                self._sessions_open > 0 or any(s.running for s in self._sources.values())
            ):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        if self._crash is not None:
            raise PipelineError(f"pipeline thread crashed: {self._crash!r}") from self._crash
        return True

    def health(self) -> PipelineHealth:
        """Liveness and readiness (see :class:`PipelineHealth`); cheap, safe from any thread."""
        if self._crash is not None:
            return PipelineHealth(False, False, f"runtime thread crashed: {self._crash!r}")
        if self._state != "running":
            return PipelineHealth(False, False, f"pipeline is {self._state}")
        with self._lock:
            bound = len(self._sources)
        if not bound:
            return PipelineHealth(True, False, "no source bound yet")
        return PipelineHealth(True, True, f"{bound} sources bound")

    def sources(self) -> list[str]:
        with self._lock:
            return [sid for sid, s in self._sources.items() if s.running]

    # -- threads -----------------------------------------------------------------------------
    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        def guarded() -> None:
            try:
                target(*args)
            except BaseException as exc:  # a bug in the runtime: crash loudly, stop everything
                log.exception("thread %s crashed", name)
                with self._changed:
                    if self._crash is None:
                        self._crash = exc
                    self._changed.notify_all()
                for channel in [self._ingress, *self._stage_inputs, *self._sink_inputs]:
                    channel.close()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def _new_session(self, source_id: str, index: int) -> Session:
        # Called with self._lock held.
        self._sessions_open += 1
        return Session(source_id=source_id, index=index)

    def _run_source(self, state: _SourceState) -> None:
        source = state.source
        source_id = source.source_id
        error: SourceError | None = None
        try:
            prepare = getattr(source, "prepare", None)
            if prepare is not None:
                prepare(self.device)
            source.open()
            frames = iter(source.frames())
            while True:
                # The time spent getting the next frame is its read and decode (for tracing).
                decode_started_ns = time.time_ns() if self._tracer is not None else 0
                frame = next(frames, None)
                if frame is None or state.stop:
                    break
                if self._tracer is not None:
                    frame.__dict__["_decode_started_ns"] = decode_started_ns
                with state.lock:
                    now = time.monotonic()
                    with self._lock:
                        if state.session.closed:  # evicted while idle: a new session
                            state.session = self._new_session(source_id, state.sessions)
                            state.sessions += 1
                        self._frames_in += 1
                        state.frames_in += 1
                        if state.first_frame_seconds is None:
                            state.first_frame_seconds = now
                    state.last_activity_seconds = now
                    frame.__dict__["_session"] = state.session
                    frame.__dict__["_t_in"] = now
                    if self._tracer is not None:
                        self._tracer.start_frame(frame)
                    dropped = self._ingress.put(frame, key=source_id, policy=source.policy)
                    state.last_activity_seconds = time.monotonic()
                for old in dropped:
                    if isinstance(old, Frame):
                        self._count_drop(old, "queue_full")
        except ClosedResourceError:
            pass  # the pipeline is closing
        except SourceError as exc:
            error = exc
        except Exception as exc:  # the world broke the input (codec, I/O): fail this source only
            error = SourceError(source_id, f"{type(exc).__name__}: {exc}")
            error.__cause__ = exc
        finally:
            with contextlib.suppress(Exception):
                source.close()
        for problem in getattr(source, "errors", ()):  # non-fatal: a skipped image, say
            state.session.record_error(str(problem))
        if error is not None:
            log.warning("source failed: %s", error)
            state.session.record_error(str(error))
        reason: EndReason = "error" if error else ("closed" if state.stop else "end_of_stream")
        with state.lock:
            self._end_session(state.session, reason)
        with self._changed:
            if error is not None:
                state.errors.append(str(error))
            state.running = False
            self._changed.notify_all()

    def _end_session(self, session: Session, reason: EndReason) -> None:
        if session.closed:
            return
        session.end_reason = reason
        try:
            self._ingress.put(_SessionEnd(session), key=session.source_id)
        except ClosedResourceError:
            with self._changed:
                self._sessions_open -= 1
                self._changed.notify_all()

    def _run_idle_eviction(self) -> None:
        assert self._idle_timeout is not None
        with self._changed:
            while self._state == "running":
                now = time.monotonic()
                next_check = now + self._idle_timeout
                for state in list(self._sources.values()):
                    if not state.running or state.session.closed:
                        continue
                    due = state.last_activity_seconds + self._idle_timeout
                    if due > now:
                        next_check = min(next_check, due)
                    elif state.lock.acquire(blocking=False):  # busy putting: not idle
                        try:
                            self._lock.release()
                            try:
                                self._end_session(state.session, "idle")
                            finally:
                                self._lock.acquire()
                        finally:
                            state.lock.release()
                self._changed.wait(max(0.0, next_check - time.monotonic()))

    def _output(self, index: int) -> Callable[[list[_Item]], None]:
        if index + 1 < len(self._stages):
            return self._stage_inputs[index + 1].put_many
        return self._deliver

    def _deliver(self, items: list[_Item]) -> None:
        """After the last stage: count the results and hand them to every sink."""
        now = time.monotonic()
        ended = 0
        with self._lock:
            for item in items:
                if isinstance(item, _SessionEnd):
                    ended += 1
                    ended_state = self._sources.get(item.session.source_id)
                    if ended_state is not None:
                        ended_state.ends_delivered += 1
                    continue
                self._frames_out += 1
                session = item.session
                state = self._sources.get(session.source_id) if session is not None else None
                if state is not None:
                    state.frames_out += 1
                    state.last_frame_seconds = now
                self._latencies.append(now - item.__dict__.get("_t_in", now))
        if self._tracer is not None:
            for item in items:
                if isinstance(item, Frame):
                    self._tracer.end_frame(item, "out")
        live = [
            isinstance(item, Frame) and self._policy_of(item) == "latest" for item in items
        ]
        for channel, counters in zip(self._sink_inputs, self._sink_counters, strict=True):
            if not any(live):
                channel.put_many(items)
                continue
            # Frames of live sources never wait for a slow sink (an encoder, say): when its
            # queue is full, the sink's oldest frame of that source goes, counted there.
            for item, is_live in zip(items, live, strict=True):
                key = item.source_id if isinstance(item, Frame) else item.session.source_id
                dropped = channel.put(item, key=key, policy="latest" if is_live else "block")
                counters.dropped += len(dropped)
        if ended:
            with self._changed:
                self._sessions_open -= ended
                self._changed.notify_all()

    def _policy_of(self, frame: Frame) -> str:
        state = self._sources.get(frame.source_id)
        return state.source.policy if state is not None else "block"

    def _close_outputs(self, index: int) -> None:
        if index + 1 < len(self._stages):
            self._stage_inputs[index + 1].close()
        else:
            for channel in self._sink_inputs:
                channel.close()

    def _run_passthrough(self) -> None:
        try:
            while True:
                try:
                    items = self._ingress.get_many(_BURST)
                except EndOfChannel:
                    return
                self._deliver(items)
        finally:
            self._close_outputs(-1)

    def _run_stage(
        self, index: int, ready: threading.Event, setup_errors: list[BaseException]
    ) -> None:
        stage = self._stages[index]
        with self._cuda_stream():
            try:
                setup = getattr(stage, "setup", None)
                if setup is not None:
                    setup(self.device)
            except Exception as exc:
                setup_errors.append(exc)
                ready.set()
                self._close_outputs(index)
                return
            ready.set()
            try:
                self._stage_loop(index)
            finally:
                close = getattr(stage, "close", None)
                if close is not None:
                    close()
                self._close_outputs(index)

    @contextlib.contextmanager
    def _cuda_stream(self) -> Iterator[None]:
        """Each stage and sink thread works on its own CUDA stream when the device is CUDA."""
        if self.device.type != "cuda":
            yield
            return
        with torch.cuda.device(self.device), torch.cuda.stream(
            torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        ):
            yield

    def _stage_loop(self, index: int) -> None:
        stage = self._stages[index]
        inbox = self._stage_inputs[index]
        batcher = self._batchers[index]
        output = self._output(index)
        active: set[Session] = set()

        def run(batch: list[Frame] | None) -> None:
            if batch:
                self._run_batch(index, batch, output)

        while True:
            deadline = batcher.deadline()
            try:
                items = inbox.get_many(
                    _BURST, None if deadline is None else max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                run(batcher.poll(time.monotonic()))
                continue
            except EndOfChannel:
                run(batcher.flush())
                for session in list(active):
                    self._call_hook(stage, "on_session_end", session)
                return
            for item in items:
                if isinstance(item, Frame):
                    frame_session = item.session
                    if frame_session is not None and frame_session not in active:
                        active.add(frame_session)
                        self._call_hook(stage, "on_session_start", frame_session)
                    now = time.monotonic()
                    run(batcher.add(item, now) or batcher.poll(now))
                else:
                    run(batcher.flush())
                    if item.session in active:
                        active.discard(item.session)
                        self._call_hook(stage, "on_session_end", item.session)
                    output([item])

    def _call_hook(self, stage: Stage, hook: str, session: Session) -> None:
        method = getattr(stage, hook, None)
        if method is None:
            return
        try:
            method(session)
        except Exception as exc:
            log.warning("stage %r %s failed for %s: %r", stage.name, hook, session.source_id, exc)
            session.record_error(f"stage {stage.name!r} {hook}: {exc!r}")

    def _run_batch(
        self, index: int, frames: list[Frame], output: Callable[[list[_Item]], None]
    ) -> None:
        stage = self._stages[index]
        counters = self._stage_counters[index]
        started = time.perf_counter()
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            _wait_ready(frames)
        if self._tracer is None:
            outcome = run_batch(stage, frames, guard_surfaces=self._debug_surfaces)
        else:
            with self._tracer.stage(stage.name, frames):
                outcome = run_batch(stage, frames, guard_surfaces=self._debug_surfaces)
        counters.oom_splits += outcome.oom_splits
        for frame, exc in outcome.failed:
            self._fail_frame(index, frame, exc)
        passed = outcome.passed
        if on_cuda and passed:
            # The next stage waits for this stage's work on the frames, not for the device.
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record()
            for frame in passed:
                frame.__dict__["_ready"] = done
        elapsed = time.perf_counter() - started
        counters.busy_seconds += elapsed
        counters.batch_seconds[bisect.bisect_left(BATCH_SECONDS_BUCKETS, elapsed)] += 1
        counters.batches += 1
        counters.frames += len(frames)
        if passed:
            output(list(passed))

    def _fail_frame(self, index: int, frame: Frame, exc: Exception) -> None:
        stage = self._stages[index]
        error = StageError(stage.name, frame.source_id, frame.seq, exc)
        # The frame rides along (underscore: formatters skip it) so a tracing log filter can
        # stamp the record with the frame's trace id.
        log.warning(
            "%s", error, exc_info=exc,
            extra={"source_id": frame.source_id, "seq": frame.seq, "_ts_frame": frame},
        )
        self._stage_counters[index].errors += 1
        if frame.session is not None:
            frame.session.record_error(str(error))
        self._count_drop(frame, "stage_error")

    def _count_drop(self, frame: Frame, reason: str) -> None:
        if self._tracer is not None:
            self._tracer.end_frame(frame, reason)
        with self._lock:
            self._dropped[reason] += 1
            session = frame.session
            state = self._sources.get(session.source_id) if session is not None else None
            if state is not None:
                state.dropped[reason] += 1

    def _run_sink(self, index: int) -> None:
        with self._cuda_stream():  # on CUDA, the sink's own stream: waits are per stream
            self._sink_loop(index)

    def _sink_loop(self, index: int) -> None:
        sink = self._sinks[index]
        inbox = self._sink_inputs[index]
        counters = self._sink_counters[index]
        try:
            while True:
                try:
                    items = inbox.get_many(_BURST)
                except EndOfChannel:
                    return
                for item in items:
                    self._sink_item(sink, counters, item)
        finally:
            try:
                sink.close()
            except Exception as exc:
                counters.errors += 1
                log.warning("sink %r failed to close: %r", sink.name, exc)

    def _sink_item(self, sink: Sink, counters: _StageCounters, item: _Item) -> None:
        try:
            if isinstance(item, Frame):
                counters.frames += 1
                if "_ready" in item.__dict__:
                    _wait_ready([item])
                if self._tracer is None:
                    sink.write(item)
                else:
                    with self._tracer.stage(f"sink {sink.name}", [item]):
                        sink.write(item)
            else:
                sink.end_session(item.session)
        except Exception as exc:  # the sink's output broke: record, keep draining
            counters.errors += 1
            log.warning("sink %r failed: %r", sink.name, exc)
            if item.session is not None:
                item.session.record_error(f"sink {sink.name!r}: {exc}")

    # -- observability ---------------------------------------------------------------------------
    def statistics(self) -> PipelineStatistics:
        with self._lock:
            sources = {
                sid: SourceStatistics(
                    source_id=sid,
                    frames_in=s.frames_in,
                    frames_out=s.frames_out,
                    dropped=dict(s.dropped),
                    sessions=s.sessions,
                    errors=tuple(s.errors) + tuple(
                        e for e in s.session.errors if e not in s.errors
                    ),
                    running=s.running,
                    decoder=getattr(s.source, "decoder_used", None),
                    first_frame_seconds=s.first_frame_seconds,
                    last_frame_seconds=s.last_frame_seconds,
                )
                for sid, s in self._sources.items()
            }
            latencies = sorted(self._latencies)
            totals = (self._frames_in, self._frames_out, dict(self._dropped))
            sessions_open = self._sessions_open
        stages = tuple(
            StageStatistics(
                name=stage.name,
                frames_total=c.frames,
                batches_total=c.batches,
                errors_total=c.errors,
                busy_seconds=c.busy_seconds,
                batch_seconds_counts=tuple(c.batch_seconds),
                oom_splits_total=c.oom_splits,
                batcher=b.statistics(),
                input=ch.statistics(),
            )
            for stage, c, b, ch in zip(
                self._stages,
                self._stage_counters,
                self._batchers,
                self._stage_inputs[: len(self._stages)],  # no stages: ingress feeds the sinks
                strict=True,
            )
        )
        sinks = tuple(
            SinkStatistics(
                name=sink.name,
                frames_total=c.frames,
                errors_total=c.errors,
                dropped_total=c.dropped,
                input=ch.statistics(),
            )
            for sink, c, ch in zip(self._sinks, self._sink_counters, self._sink_inputs, strict=True)
        )
        return PipelineStatistics(
            frames_in=totals[0],
            frames_out=totals[1],
            dropped=totals[2],
            sources=sources,
            stages=stages,
            sinks=sinks,
            sessions_open=sessions_open,
            latency_seconds_p50=_percentile(latencies, 0.50),
            latency_seconds_p95=_percentile(latencies, 0.95),
        )


def _wait_ready(frames: Sequence[Frame]) -> None:
    """Make the current CUDA stream wait for the work that produced each frame (its decode or
    the previous stage), and tell the allocator this stream uses the surfaces.

    The wait is on the device, not the host: whatever the thread then does with the frame on
    its current stream (a copy to the host included) runs after the frame's producer.
    """
    stream = torch.cuda.current_stream()
    waited: set[int] = set()
    for frame in frames:
        ready = frame.__dict__.get("_ready")
        if ready is not None and id(ready) not in waited:
            stream.wait_event(ready)
            waited.add(id(ready))
        surface = frame.surface
        if surface is not None and surface.is_cuda:
            surface.record_stream(stream)


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    if len(ordered) == 1:
        return ordered[0]
    return pystats.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]
