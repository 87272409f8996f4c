"""The source side of the runtime: a thread per source (or shared threads for sources that can
be pumped), sessions, idle eviction."""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import torch

from torchstream._errors import ClosedResourceError, SourceError
from torchstream._types import PumpedSource, Source
from torchstream.frame import Frame
from torchstream.pipeline._channel import Channel
from torchstream.pipeline._items import _KEEP_FINISHED, _Item, _SessionEnd, _SourceState
from torchstream.pipeline._session import EndReason, Session
from torchstream.pipeline._tracing import FrameTracer

__all__ = ["_Sourcing", "_interrupt"]

log = logging.getLogger(__name__)

# A pumped source's place in the shared threads' round (see _Sourcing._wake):
_IDLE, _QUEUED, _RUNNING, _AGAIN, _DONE = range(5)
_PUMP_THREAD = "ts/sources/"
"""Names of the shared source threads: ts/sources/1, ts/sources/2, ..."""


class _Sourcing:
    """Part of :class:`~torchstream.Pipeline`: reading sources into the ingress channel."""

    device: torch.device
    _lock: threading.Lock
    _changed: threading.Condition
    _sources: dict[str, _SourceState]
    _ingress: Channel[_Item]
    _tracer: FrameTracer | None
    _idle_timeout: float | None
    _sessions_open: int
    _frames_in: int
    _state: str
    _crash: BaseException | None
    _shared_source_threads: int | None
    _pump_ready: collections.deque[_SourceState]
    _pump_changed: threading.Condition
    _pump_threads: int
    _pump_stopping: bool

    def _spawn(
        self, name: str, target: Callable[..., None], *args: Any, owned: bool = True
    ) -> threading.Thread:
        raise NotImplementedError

    def _count_drop(self, frame: Frame, reason: str) -> None:
        raise NotImplementedError

    def add_source(self, source: Source) -> None:
        """Start reading ``source`` on its own thread (or on the shared source threads, for
        a source with ``attach`` and ``pump`` in a pipeline made with
        ``shared_source_threads``). Its id must not be running already."""
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
            pumped = self._shared_source_threads is not None and isinstance(source, PumpedSource)
            state.pumped = pumped
        if pumped:
            self._start_pumping(state)
        else:
            state.thread = self._spawn(
                f"ts/source/{source_id}", self._run_source, state, owned=False
            )

    def remove_source(self, source_id: str, *, timeout_seconds: float | None = None) -> bool:
        """Stop reading ``source_id`` and close it, while the pipeline runs.

        Its session ends with reason ``closed``: frames already read still go through the
        stages, then every stage's ``on_session_end`` runs and every sink gets
        ``end_session``, in order after them. The source's thread exits and the source is
        closed on it (decoder and connection freed). A source blocked in a read is
        interrupted when it has a ``stop()`` method (a live source waiting to reconnect
        stops at once, one blocked on the network within its timeouts); others stop
        before their next frame.

        Returns True once the source's thread has exited and its session's end has passed
        the stages (queued to the sinks); False if ``timeout_seconds`` ran out first (it
        still stops). Removing a source that already ended is a no-op (True). Raises
        :class:`KeyError` for an id this pipeline does not know.
        """
        with self._changed:
            state = self._sources.get(source_id)
            if state is None:
                known = ", ".join(repr(sid) for sid in self._sources) or "none"
                raise KeyError(f"no source {source_id!r} in this pipeline (known: {known})")
            state.stop = True
        _interrupt(state.source)
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        if state.pumped:
            self._wake(state)  # a source without a stop() hook: it ends at its next turn
        thread = state.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_seconds)
            if thread.is_alive():
                return False
        # On a shared source thread (a source's callback), waiting could wait for this very
        # thread: the source stops at its next turn, and the answer is whether it has.
        on_pump = threading.current_thread().name.startswith(_PUMP_THREAD)
        with self._changed:
            if on_pump:
                return not state.running and state.ends_delivered >= state.sessions
            while state.pumped and state.running:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
            while (
                self._crash is None
                and self._state == "running"
                and state.ends_delivered < state.sessions
            ):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

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

    def wait_source(self, source_id: str, timeout_seconds: float | None = None) -> bool:
        """Block until ``source_id`` is not running (its thread is done, so the id can be
        added again); False if ``timeout_seconds`` ran out first."""
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        with self._changed:
            while (state := self._sources.get(source_id)) is not None and state.running:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def sources(self) -> list[str]:
        with self._lock:
            return [sid for sid, s in self._sources.items() if s.running]

    def _new_session(self, source_id: str, index: int) -> Session:
        # Called with self._lock held.
        self._sessions_open += 1
        return Session(source_id=source_id, index=index)

    def _run_source(self, state: _SourceState) -> None:
        source = state.source
        error: SourceError | None = None
        try:
            self._open_source(state)
            frames = iter(source.frames())
            while True:
                # The time spent getting the next frame is its read and decode (for tracing).
                decode_started_ns = time.time_ns() if self._tracer is not None else 0
                frame = next(frames, None)
                if frame is None or state.stop:
                    break
                self._admit(state, frame, decode_started_ns)
        except ClosedResourceError:
            pass  # the pipeline is closing
        except Exception as exc:
            error = _source_error(source.source_id, exc)
        finally:
            with contextlib.suppress(Exception):
                source.close()
        self._finish_source(state, error)

    def _open_source(self, state: _SourceState) -> None:
        prepare = getattr(state.source, "prepare", None)
        if prepare is not None:
            prepare(self.device)
        state.source.open()
        state.opened = True

    def _admit(self, state: _SourceState, frame: Frame, decode_started_ns: int) -> None:
        """Start ``frame``'s way through the pipeline (on its source's thread)."""
        source_id = state.source.source_id
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
            dropped = self._ingress.put(frame, key=source_id, policy=state.source.policy)
            state.last_activity_seconds = time.monotonic()
        for old in dropped:
            if isinstance(old, Frame):
                self._count_drop(old, "queue_full")

    def _finish_source(self, state: _SourceState, error: SourceError | None) -> None:
        """The source is over (ended, stopped or failed): end its session."""
        for problem in getattr(state.source, "errors", ()):  # non-fatal: a skipped image
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

    # -- pumped sources: shared threads instead of a thread each ------------------------------
    def _start_pumping(self, state: _SourceState) -> None:
        assert isinstance(state.source, PumpedSource)
        state.source.attach(lambda: self._wake(state))
        with self._pump_changed:
            if self._pump_threads < (self._shared_source_threads or 1):
                self._pump_threads += 1
                self._spawn(f"{_PUMP_THREAD}{self._pump_threads}", self._run_pump)
        self._wake(state)  # its first turn opens it

    def _wake(self, state: _SourceState) -> None:
        """``state``'s source has something new: give it a turn on a shared thread. One
        thread at a time pumps a source, so its frames stay in order."""
        with self._pump_changed:
            if state.pumping == _IDLE:
                state.pumping = _QUEUED
                self._pump_ready.append(state)
                self._pump_changed.notify()
            elif state.pumping == _RUNNING:
                state.pumping = _AGAIN

    def _run_pump(self) -> None:
        while True:
            with self._pump_changed:
                while not self._pump_ready:
                    if self._pump_stopping:
                        return
                    self._pump_changed.wait()
                state = self._pump_ready.popleft()
                state.pumping = _RUNNING
            finished, error = self._pump(state)
            with self._pump_changed:
                if finished:
                    state.pumping = _DONE
                elif state.pumping == _AGAIN:
                    state.pumping = _QUEUED
                    self._pump_ready.append(state)
                else:
                    state.pumping = _IDLE
            if finished:
                self._finish_source(state, error)

    def _pump(self, state: _SourceState) -> tuple[bool, SourceError | None]:
        """One turn of a pumped source: admit the frames of what it has queued. Returns
        whether the source is over, and the error that ended it, if any."""
        source = state.source
        error: SourceError | None = None
        try:
            if not state.opened:
                self._open_source(state)
            frames = cast(PumpedSource, source).pump()
            try:
                while not state.stop:
                    decode_started_ns = time.time_ns() if self._tracer is not None else 0
                    frame = next(frames, None)
                    if frame is None:
                        break
                    self._admit(state, frame, decode_started_ns)
            finally:
                close = getattr(frames, "close", None)  # a generator ended early: its cleanup
                if close is not None:
                    close()
            if not (state.stop or cast(PumpedSource, source).finished):
                return False, None
        except ClosedResourceError:
            pass  # the pipeline is closing
        except Exception as exc:
            error = _source_error(source.source_id, exc)
        with contextlib.suppress(Exception):
            source.close()
        return True, error

    def _stop_pumps(self) -> None:
        """Called by ``close`` once every source is over: the shared threads exit."""
        with self._pump_changed:
            self._pump_stopping = True
            self._pump_changed.notify_all()

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

    def _policy_of(self, frame: Frame) -> str:
        state = self._sources.get(frame.source_id)
        return state.source.policy if state is not None else "block"


def _source_error(source_id: str, exc: Exception) -> SourceError:
    """What failed a source: its own SourceError, or the world's error (codec, I/O) as one."""
    if isinstance(exc, SourceError):
        return exc
    error = SourceError(source_id, f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def _interrupt(source: Source) -> None:
    """Ask ``source`` to end its ``frames()`` soon, from another thread (optional hook)."""
    stop = getattr(source, "stop", None)
    if stop is not None:
        try:
            stop()
        except Exception as exc:  # a bug of the source's: it still stops at its next frame
            log.warning("source %s: stop() failed: %r", source.source_id, exc)
