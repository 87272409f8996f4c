"""Counting rejected messages by reason, and deciding when to log them. Sans-IO."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Rejects"]


class Rejects:
    """Rejected messages counted by reason, and when to log them. Thread-safe.

    Receivers call :meth:`add` for each rejected message and log only when it returns a
    number: the first rejection of each reason at once, then at most one line per reason
    every ``log_interval_seconds``, saying how many went unlogged in between. A flood of bad
    messages costs a counter increment each, not a log line each.
    """

    def __init__(
        self,
        *,
        log_interval_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if log_interval_seconds < 0:
            raise ValueError(f"log_interval_seconds must be >= 0, got {log_interval_seconds}")
        self._interval = log_interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._unlogged: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}

    def add(self, reason: str) -> int | None:
        """Count one rejection. Returns None when the caller should not log it, else how many
        rejections of this reason went unlogged since the last line (0 for the first)."""
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1
            now = self._clock()
            last = self._logged_at.get(reason)
            if last is not None and now - last < self._interval:
                self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
                return None
            self._logged_at[reason] = now
            return self._unlogged.pop(reason, 0)

    def snapshot(self) -> dict[str, int]:
        """Counts by reason so far (a copy)."""
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())
