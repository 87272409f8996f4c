"""NVDEC sessions kept after their source ended, for the next source with the same stream
parameters (the pool every :class:`~torchstream.codecs._nvdec.NvdecDecoder` uses)."""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["NvdecSessions", "SessionStatistics", "nvdec_sessions"]

_SessionKey = tuple[int, str, int, int, str, str]
"""What a session can be reused for: device index, codec, width, height, pixel format, digest
of the codec's parameter sets (a stream with other sequence parameters may need more
reference surfaces than the session has: measured, its pictures then differ)."""


@dataclass(eq=False)
class _Session:
    """One NVDEC decoder session and the CUDA stream it decodes (and converts to RGB) on."""

    decoder: Any
    cuda_stream: Any
    key: _SessionKey | None
    idle_since: float = 0.0


@dataclass(frozen=True)
class SessionStatistics:
    """Counts of :class:`NvdecSessions` since the process started."""

    created: int
    """Sessions opened by the driver."""
    reused: int
    """Sources that started on a session another source had finished with."""
    destroyed: int
    idle: int
    """Sessions kept now, waiting for a source."""


class NvdecSessions:
    """NVDEC sessions that sources have finished with, kept for the next source with the same
    codec, picture size, pixel format and parameter sets.

    Measured on an H200: the driver opens sessions one at a time, ~50-90 ms each (32 sources
    that start together wait up to 2 s for their first picture), and destroying one takes
    20-230 ms with the GIL held, which stops every other thread of the process. A source whose
    stream ended cleanly (every picture out, no decode error) gives its session back here; the
    next source with the same stream parameters (codec, size, pixel format, parameter sets:
    the next clip of the same camera or encoder) decodes its first packet at once, and the
    session is not destroyed while others decode. A session that failed, or whose source
    stopped mid-stream, is destroyed instead. An idle 1080p H.264 session holds ~75 MiB of
    GPU memory: the pool delays the release of what running sources held, it does not add to
    the peak.

    At most ``max_idle`` sessions are kept (the oldest goes first); one idle longer than
    ``idle_seconds`` is destroyed at the next take or give, and all of them when a pipeline
    closes and at exit. The process's pool is :func:`nvdec_sessions`; ``max_idle = 0`` turns
    reuse off. Thread-safe.
    """

    def __init__(
        self,
        *,
        max_idle: int = 32,
        idle_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_idle < 0:
            raise ValueError(f"max_idle must be >= 0, got {max_idle}")
        if idle_seconds < 0:
            raise ValueError(f"idle_seconds must be >= 0, got {idle_seconds}")
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: list[_Session] = []  # oldest first
        self._created = self._reused = self._destroyed = 0
        self._exit_hook = False

    def open(
        self, key: _SessionKey | None, create: Callable[[], _Session]
    ) -> tuple[_Session, bool]:
        """An idle session for ``key`` (the one given back last), else ``create()``'s; and
        whether it was reused. ``key`` None: always a new session."""
        session = None
        with self._lock:
            expired = self._expired()
            if key is not None:
                for i in range(len(self._idle) - 1, -1, -1):
                    if self._idle[i].key == key:
                        session = self._idle.pop(i)
                        self._reused += 1
                        break
        self._destroy(expired)
        if session is not None:
            return session, True
        session = create()
        with self._lock:
            self._created += 1
        return session, False

    def give(self, session: _Session) -> None:
        """Keep ``session`` (its stream ended cleanly) for a later source."""
        if session.key is None:
            self.destroy(session)
            return
        with self._lock:
            session.idle_since = self._clock()
            self._idle.append(session)
            expired = self._expired()
            excess = len(self._idle) - self.max_idle
            if excess > 0:
                expired += self._idle[:excess]
                del self._idle[:excess]
            if not self._exit_hook:
                self._exit_hook = True
                atexit.register(self.clear)  # before the CUDA context goes away
        self._destroy(expired)

    def destroy(self, session: _Session) -> None:
        """Free ``session`` now (it failed, or its stream did not end)."""
        self._destroy([session])

    def clear(self) -> int:
        """Destroy every idle session; how many there were."""
        with self._lock:
            sessions, self._idle = self._idle, []
        self._destroy(sessions)
        return len(sessions)

    def statistics(self) -> SessionStatistics:
        with self._lock:
            return SessionStatistics(
                self._created, self._reused, self._destroyed, len(self._idle)
            )

    def _expired(self) -> list[_Session]:
        """Remove and return the sessions idle for too long (lock held)."""
        deadline = self._clock() - self.idle_seconds
        keep = [s for s in self._idle if s.idle_since > deadline]
        if len(keep) == len(self._idle):
            return []
        expired = [s for s in self._idle if s.idle_since <= deadline]
        self._idle = keep
        return expired

    def _destroy(self, sessions: list[_Session]) -> None:
        for session in sessions:
            session.decoder = None  # the driver's session goes with the last reference
        if sessions:
            with self._lock:
                self._destroyed += len(sessions)


_SESSIONS = NvdecSessions()


def nvdec_sessions() -> NvdecSessions:
    """The process's pool of idle NVDEC sessions, which every NVDEC decoder of torchstream
    takes its session from and gives it back to."""
    return _SESSIONS
