"""The runtime: sources, stages and sinks on their own threads, joined by bounded channels."""

from __future__ import annotations

import collections
import logging
import statistics as pystats
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from torchstream._errors import (
    ClosedResourceError,
    PipelineError,
)
from torchstream._types import Sink, Stage
from torchstream.codecs._nvdec_sessions import nvdec_sessions
from torchstream.frame import Frame
from torchstream.pipeline._batcher import Batcher, BatchPolicy
from torchstream.pipeline._channel import Channel
from torchstream.pipeline._items import (
    _droppable,
    _Item,
    _SessionEnd,
    _SourceState,
    _StageCounters,
)
from torchstream.pipeline._sourcing import _interrupt, _Sourcing
from torchstream.pipeline._statistics import (
    PipelineHealth,
    PipelineStatistics,
    SinkStatistics,
    SourceStatistics,
    StageStatistics,
)
from torchstream.pipeline._tracing import FrameTracer
from torchstream.pipeline._workers import _Workers

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)


class Pipeline(_Sourcing, _Workers):
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

    ``on_drop(frame, reason)`` is called on the dropping thread for every frame that does not
    reach the sinks (``queue_full``, ``stage_error``, ``deadline``, ...): a request-serving
    front end answers the frame's request from it. Keep it cheap; what it raises is logged.
    A frame whose ``frame.__dict__["_deadline"]`` (a ``time.monotonic()`` value) has passed
    when its next stage would run is dropped as ``deadline`` instead of computed.

    ``shared_source_threads=N`` decodes sources that can be pumped
    (:class:`~torchstream.sources.PushedSource`: the module's, the NATS worker's and the HTTP
    front end's sources) on N shared threads instead of a thread each: with hundreds of
    cameras pushing a few frames a second each, one thread per camera costs a thread wake-up
    (and a GIL hand-off) per frame; shared threads take the frames of many cameras in one
    turn. One thread at a time decodes a given source, so its frames stay in order. Sources
    that read by themselves (files, RTSP, image folders) keep their own thread.

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
        on_drop: Callable[[Frame, str], None] | None = None,
        shared_source_threads: int | None = None,
    ) -> None:
        if shared_source_threads is not None and shared_source_threads < 1:
            raise ValueError(
                f"shared_source_threads must be >= 1 or None, got {shared_source_threads}"
            )
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
        self._on_drop = on_drop
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
        self._shared_source_threads = shared_source_threads
        self._pump_changed = threading.Condition(threading.Lock())
        self._pump_ready: collections.deque[_SourceState] = collections.deque()
        self._pump_threads = 0
        self._pump_stopping = False
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
            _interrupt(state.source)
        for state in states:
            if state.thread is not None:
                state.thread.join()
            elif state.pumped:
                self._wake(state)  # a source without a stop() hook ends at its next turn
        with self._changed:
            while self._crash is None and any(s.pumped and s.running for s in states):
                self._changed.wait(0.1)
        self._stop_pumps()
        self._ingress.close()
        for thread in self._threads:
            thread.join()
        # Sessions its sources gave back: GPU memory is returned when the pipeline ends.
        nvdec_sessions().clear()
        if self._crash is not None:
            raise PipelineError(f"pipeline thread crashed: {self._crash!r}") from self._crash


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


    # -- threads -----------------------------------------------------------------------------
    def _spawn(
        self, name: str, target: Callable[..., None], *args: Any, owned: bool = True
    ) -> threading.Thread:
        """Start a runtime thread. ``owned``: joined by ``close`` (source threads are not
        kept here: their states are, so sources coming and going do not grow this list)."""
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
        if owned:
            self._threads.append(thread)
        thread.start()
        return thread


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
                entered = item.__dict__.get("_t_in", now)
                if state is not None:
                    state.frames_out += 1
                    state.last_frame_seconds = now
                    state.lags.append(now - item.__dict__.get("_t_received", entered))
                self._latencies.append(now - entered)
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


    def _close_outputs(self, index: int) -> None:
        if index + 1 < len(self._stages):
            self._stage_inputs[index + 1].close()
        else:
            for channel in self._sink_inputs:
                channel.close()


    def _count_drop(self, frame: Frame, reason: str) -> None:
        if self._tracer is not None:
            self._tracer.end_frame(frame, reason)
        if self._on_drop is not None:
            try:
                self._on_drop(frame, reason)
            except Exception:  # the owner's callback must not break the runtime's threads
                log.exception("on_drop callback failed for %r", frame)
        with self._lock:
            self._dropped[reason] += 1
            session = frame.session
            state = self._sources.get(session.source_id) if session is not None else None
            if state is not None:
                state.dropped[reason] += 1


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
                    lag_seconds_p50=_rank(lags := sorted(s.lags), 0.50),
                    lag_seconds_p99=_rank(lags, 0.99),
                    live=live() if (live := getattr(s.source, "live_statistics", None)) else None,
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


def _rank(ordered: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``ordered`` by nearest rank (cheap: no interpolation)."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    if len(ordered) == 1:
        return ordered[0]
    return pystats.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]
