"""Admission control: a bounded number of requests in flight, and an honest ``Retry-After``
from the measured service rate. Used from the event loop's thread only."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Admission", "AdmissionStatistics"]

_RATE_WINDOW_SECONDS = 10.0
"""Completions older than this do not count towards the service rate."""


@dataclass(frozen=True)
class AdmissionStatistics:
    in_flight: int
    max_in_flight: int
    admitted_total: int
    rejected_total: int
    completed_total: int
    service_rate_per_second: float
    """Requests served per busy second over the last ten seconds (0.0 before any)."""


class Admission:
    """At most ``max_in_flight`` admitted at once: :meth:`try_enter` says yes (then
    :meth:`leave` must follow, once) or no at once — it never queues the caller.

    With ``within_seconds``, a request is also refused when those in flight would take longer
    than that at the measured service rate: it would miss its deadline anyway, so it gets an
    immediate refusal instead of a late 504. The rate is requests served per second of *busy*
    time (some request in flight) over the last ten seconds: at light load it is below what
    the pipeline can do (a batching pipeline does more when busier), so the prediction errs
    towards admitting.
    """

    def __init__(
        self, max_in_flight: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self._clock = clock
        self.in_flight = 0
        self._admitted = 0
        self._rejected = 0
        self._completed = 0
        # (when, busy seconds so far) per request served, oldest first
        self._done: collections.deque[tuple[float, float]] = collections.deque(maxlen=8192)
        self._busy_total = 0.0
        self._busy_since: float | None = None

    def _busy(self, now: float) -> float:
        """Seconds with a request in flight, since the start."""
        if self._busy_since is None:
            return self._busy_total
        return self._busy_total + now - self._busy_since

    def try_enter(self, *, within_seconds: float | None = None) -> bool:
        if self.in_flight >= self.max_in_flight or (
            within_seconds is not None and self.in_flight > 0
            and self.in_flight >= self.service_rate() * within_seconds > 0
        ):
            self._rejected += 1
            return False
        if self.in_flight == 0:
            self._busy_since = self._clock()
        self.in_flight += 1
        self._admitted += 1
        return True

    def leave(self, *, served: bool) -> None:
        """One admitted request is over; ``served``: the pipeline finished it (it counts
        towards the service rate), rather than it failing or expiring."""
        if self.in_flight <= 0:
            raise RuntimeError("leave() without a matching try_enter()")
        now = self._clock()
        self.in_flight -= 1
        if served:
            self._completed += 1
            self._done.append((now, self._busy(now)))
        if self.in_flight == 0 and self._busy_since is not None:
            self._busy_total += now - self._busy_since
            self._busy_since = None

    def service_rate(self) -> float:
        """Requests served per busy second, over the last ten seconds (0.0 until two were
        served)."""
        now = self._clock()
        done = self._done
        while done and now - done[0][0] > _RATE_WINDOW_SECONDS:
            done.popleft()
        if len(done) < 2:
            return 0.0
        busy = max(self._busy(now) - done[0][1], 1e-3)
        return (len(done) - 1) / busy

    def retry_after_seconds(self) -> float:
        """How long until the requests now in flight are done, at the measured rate (1 s
        when nothing was measured yet)."""
        rate = self.service_rate()
        if rate <= 0.0:
            return 1.0
        return max(self.in_flight, 1) / rate

    def retry_after_header(self) -> str:
        """``Retry-After`` in whole seconds (HTTP's unit), at least 1."""
        return str(max(1, math.ceil(self.retry_after_seconds())))

    def statistics(self) -> AdmissionStatistics:
        return AdmissionStatistics(
            in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            admitted_total=self._admitted,
            rejected_total=self._rejected,
            completed_total=self._completed,
            service_rate_per_second=self.service_rate(),
        )
