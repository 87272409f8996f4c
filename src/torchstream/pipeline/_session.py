"""Per-source sessions: created at a source's first frame, closed at its end."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["EndReason", "Session"]

EndReason = Literal["end_of_stream", "idle", "error", "closed"]

_ids = itertools.count()


@dataclass(eq=False)
class Session:
    """One continuous run of frames from one source.

    The runtime guarantees that every stage sees a session's frames in order, calls its
    ``on_session_start`` before the first and ``on_session_end`` after the last. ``state`` is
    for stages: key it by the stage's name (``session.state[self.name] = Tracker()``); each
    key is only touched by its stage's thread. A source that goes quiet longer than the
    pipeline's idle timeout gets its session closed (``end_reason == "idle"``) and a new one
    when it speaks again; ``index`` counts the sessions of the same source id.
    """

    source_id: str
    index: int = 0
    started_at_seconds: float = field(default_factory=time.time)
    state: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    end_reason: EndReason | None = None
    uid: int = field(default_factory=lambda: next(_ids))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def closed(self) -> bool:
        return self.end_reason is not None

    def record_error(self, message: str) -> None:
        """Keep ``message`` (the newest 256 are kept: a session may last for weeks)."""
        with self._lock:
            self.errors.append(message)
            if len(self.errors) > 256:
                del self.errors[0]

    def __hash__(self) -> int:
        return self.uid
