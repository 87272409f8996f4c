"""What travels between the runtime's threads, and the runtime's per-source and per-stage
bookkeeping."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

from torchstream._types import Source
from torchstream.frame import Frame
from torchstream.pipeline._session import Session
from torchstream.pipeline._statistics import BATCH_SECONDS_BUCKETS

__all__ = [
    "_BURST",
    "_KEEP_FINISHED",
    "_LAGS",
    "_Item",
    "_SessionEnd",
    "_SourceState",
    "_StageCounters",
    "_droppable",
]


@dataclass(frozen=True, eq=False)
class _SessionEnd:
    """Control marker: the session's last frame has gone before it. Never dropped."""

    session: Session


_Item = Frame | _SessionEnd

_KEEP_FINISHED = 256
"""Finished sources whose statistics a pipeline keeps (the newest)."""

_BURST = 256
"""Most items a consumer thread takes from its channel at once."""

_LAGS = 256
"""Recent frames per source whose lag (received → handed to the sinks) a pipeline keeps."""


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
    lags: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_LAGS)
    )
    first_frame_seconds: float | None = None
    last_frame_seconds: float | None = None
    last_activity_seconds: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None
    # Pumped sources (decoded on the pipeline's shared source threads) instead of a thread:
    pumped: bool = False
    opened: bool = False
    pumping: int = 0  # _IDLE, _QUEUED, _RUNNING, _AGAIN or _DONE (under the pump's lock)


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
