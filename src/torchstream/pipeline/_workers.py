"""The stage and sink side of the runtime: a thread per stage (batching, CUDA stream, error
isolation) and per sink."""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import torch

from torchstream._errors import StageError
from torchstream._types import Sink, Stage
from torchstream.frame import Frame
from torchstream.pipeline._attempt import run_batch
from torchstream.pipeline._batcher import Batcher
from torchstream.pipeline._channel import Channel, EndOfChannel
from torchstream.pipeline._items import _BURST, _Item, _StageCounters
from torchstream.pipeline._session import Session
from torchstream.pipeline._statistics import BATCH_SECONDS_BUCKETS
from torchstream.pipeline._tracing import FrameTracer

__all__ = ["_Workers", "_wait_ready"]

log = logging.getLogger(__name__)


class _Workers:
    """Part of :class:`~torchstream.Pipeline`: the stage and sink threads."""

    device: torch.device
    _stages: list[Stage]
    _sinks: list[Sink]
    _stage_inputs: list[Channel[_Item]]
    _sink_inputs: list[Channel[_Item]]
    _batchers: list[Batcher[Frame]]
    _stage_counters: list[_StageCounters]
    _sink_counters: list[_StageCounters]
    _ingress: Channel[_Item]
    _tracer: FrameTracer | None
    _debug_surfaces: bool

    def _deliver(self, items: list[_Item]) -> None:
        raise NotImplementedError

    def _close_outputs(self, index: int) -> None:
        raise NotImplementedError

    def _count_drop(self, frame: Frame, reason: str) -> None:
        raise NotImplementedError

    def _output(self, index: int) -> Callable[[list[_Item]], None]:
        if index + 1 < len(self._stages):
            return self._stage_inputs[index + 1].put_many
        return self._deliver

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

        # This thread's CUDA stream (set by _cuda_stream), looked up once: the lookup costs
        # more than the event waits it serves.
        stream = torch.cuda.current_stream() if self.device.type == "cuda" else None

        def run(batch: list[Frame] | None) -> None:
            if batch:
                self._run_batch(index, batch, output, stream)

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
        self,
        index: int,
        frames: list[Frame],
        output: Callable[[list[_Item]], None],
        stream: torch.cuda.Stream | None,
    ) -> None:
        stage = self._stages[index]
        counters = self._stage_counters[index]
        frames = self._drop_expired(frames)
        if not frames:
            return
        started = time.perf_counter()
        if stream is not None:
            _wait_ready(frames, stream)
        if self._tracer is None:
            outcome = run_batch(stage, frames, guard_surfaces=self._debug_surfaces)
        else:
            with self._tracer.stage(stage.name, frames):
                outcome = run_batch(stage, frames, guard_surfaces=self._debug_surfaces)
        counters.oom_splits += outcome.oom_splits
        for frame, exc in outcome.failed:
            self._fail_frame(index, frame, exc)
            # Its traceback holds the frames of the calls down to the stage, whose locals
            # hold the outcome, which holds the exception: a cycle that would keep the
            # batch's frames (GPU memory) until the collector's next full pass. Logged
            # already: let it go.
            exc.__traceback__ = None
        passed = outcome.passed
        if stream is not None and passed:
            # The next stage waits for this stage's work on the frames, not for the device.
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record(stream)
            for frame in passed:
                frame.__dict__["_ready"] = done
        elapsed = time.perf_counter() - started
        counters.busy_seconds += elapsed
        counters.batch_seconds[bisect.bisect_left(BATCH_SECONDS_BUCKETS, elapsed)] += 1
        counters.batches += 1
        counters.frames += len(frames)
        if passed:
            output(list(passed))

    def _drop_expired(self, frames: list[Frame]) -> list[Frame]:
        """Frames whose deadline (``frame.__dict__["_deadline"]``, a ``time.monotonic()``
        value set by whoever waits for the result, e.g. an HTTP request) has passed are not
        worth computing: they are dropped as ``deadline`` before the stage runs."""
        now = time.monotonic()
        if all(frame.__dict__.get("_deadline", now + 1.0) > now for frame in frames):
            return frames
        kept = []
        for frame in frames:
            if frame.__dict__.get("_deadline", now + 1.0) > now:
                kept.append(frame)
            else:
                self._count_drop(frame, "deadline")
        return kept

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

    def _run_sink(self, index: int) -> None:
        with self._cuda_stream():  # on CUDA, the sink's own stream: waits are per stream
            self._sink_loop(index)

    def _sink_loop(self, index: int) -> None:
        sink = self._sinks[index]
        inbox = self._sink_inputs[index]
        counters = self._sink_counters[index]
        stream = torch.cuda.current_stream() if self.device.type == "cuda" else None
        try:
            while True:
                try:
                    items = inbox.get_many(_BURST)
                except EndOfChannel:
                    return
                for item in items:
                    self._sink_item(sink, counters, item, stream)
        finally:
            try:
                sink.close()
            except Exception as exc:
                counters.errors += 1
                log.warning("sink %r failed to close: %r", sink.name, exc)

    def _sink_item(
        self,
        sink: Sink,
        counters: _StageCounters,
        item: _Item,
        stream: torch.cuda.Stream | None,
    ) -> None:
        try:
            if isinstance(item, Frame):
                counters.frames += 1
                if stream is not None and "_ready" in item.__dict__:
                    _wait_ready([item], stream)
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


def _wait_ready(frames: Sequence[Frame], stream: torch.cuda.Stream) -> None:
    """Make ``stream`` (the calling thread's current CUDA stream) wait for the work that
    produced each frame (its decode or the previous stage), and tell the allocator this
    stream uses the surfaces.

    The wait is on the device, not the host: whatever the thread then does with the frame on
    its current stream (a copy to the host included) runs after the frame's producer.
    """
    waited: set[int] = set()
    for frame in frames:
        ready = frame.__dict__.get("_ready")
        if ready is not None and id(ready) not in waited:
            stream.wait_event(ready)
            waited.add(id(ready))
        surface = frame.surface
        if surface is not None and surface.is_cuda:
            surface.record_stream(stream)
