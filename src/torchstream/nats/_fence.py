"""Fencing a worker that lost its partitions without knowing it. Sans-IO, clock injected.

A worker paused for a few seconds (SIGSTOP, a long GC or swap storm, a frozen VM) loses its
pins and its place in the group while it sleeps; when it wakes it still holds frames and
results and would emit them after the new owner's, out of order. Two guards stop that:

- :class:`StallWatchdog`, in the worker: when its loop has made no progress for longer than
  a threshold, it must stop emitting, drop what it holds (counted ``fenced``), give up all
  its partitions and join again as a fresh owner.
- :class:`Fence`, wherever results are received (the sink, and the worker itself when it
  watches the claims): every result carries its worker id, partition and claim *epoch*;
  a result whose epoch is older than the newest seen for its partition is dropped and
  counted. This closes the race the watchdog cannot: a check passed just before the pause.

Epochs must be ordered: use a number that grows with each new claim of a partition, such as
the revision of a compare-and-set write of the claim into a KV bucket. (A JetStream pin id
is random, not ordered, so it cannot serve as an epoch by itself.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["Claim", "Fence", "FenceStatistics", "Stall", "StallWatchdog"]


@dataclass(frozen=True)
class Claim:
    """One worker's ownership of one partition, from a given epoch on."""

    partition: int
    epoch: int
    worker_id: str


@dataclass(frozen=True)
class FenceStatistics:
    admitted: int
    fenced: int
    """Results dropped: an older epoch than the newest claim, or a rival claim's epoch."""
    duplicates: int
    """Results dropped: their seq was at or below the last admitted for their source."""


class Fence:
    """The newest claim seen per partition, and the check of each result against it.

    A result is admitted when its epoch is newer than the newest claim seen for its
    partition (it becomes the newest), or equal to it from the same worker. It is ``fenced``
    when its epoch is older, or equal but from another worker (two claims with one epoch:
    the first one seen wins; with compare-and-set claims this does not happen).

    Given ``source_id`` and ``seq`` too (a sink does), a result at or below the last seq
    admitted for its source is a ``duplicate``: a stale owner whose result raced ahead of
    the new owner's first one cannot make the new owner's copy a second result.
    """

    def __init__(self) -> None:
        self._claims: dict[int, Claim] = {}
        self._last_seq: dict[str, int] = {}
        self._admitted = 0
        self._fenced = 0
        self._duplicates = 0

    def observe_claim(self, claim: Claim) -> bool:
        """Learn a claim without a result (from watching the claims). Returns False, and
        changes nothing, if it is not newer than the claim known for its partition."""
        known = self._claims.get(claim.partition)
        if known is not None and claim.epoch <= known.epoch:
            return False
        self._claims[claim.partition] = claim
        return True

    def check(
        self,
        *,
        partition: int,
        epoch: int,
        worker_id: str,
        source_id: str | None = None,
        seq: int | None = None,
    ) -> Literal["fenced", "duplicate"] | None:
        """None: emit or accept the result (and remember it). Else why to drop it, counted."""
        known = self._claims.get(partition)
        if known is not None and (
            epoch < known.epoch or (epoch == known.epoch and worker_id != known.worker_id)
        ):
            self._fenced += 1
            return "fenced"
        if source_id is not None and seq is not None:
            last = self._last_seq.get(source_id)
            if last is not None and seq <= last:
                self._duplicates += 1
                return "duplicate"
            self._last_seq[source_id] = seq
        if known is None or epoch > known.epoch:
            self._claims[partition] = Claim(partition, epoch, worker_id)
        self._admitted += 1
        return None

    def forget_source(self, source_id: str) -> None:
        """Forget the last seq admitted for ``source_id`` (its session ended: a new session of
        the same id starts again at seq 0). The claims are kept, so a stale owner's late
        result is still fenced by its epoch."""
        self._last_seq.pop(source_id, None)

    def admit(self, *, partition: int, epoch: int, worker_id: str) -> bool:
        """The epoch check alone: True to emit the result, False to drop it (``fenced``)."""
        return self.check(partition=partition, epoch=epoch, worker_id=worker_id) is None

    def current(self, partition: int) -> Claim | None:
        """The newest claim seen for ``partition``, or None."""
        return self._claims.get(partition)

    def statistics(self) -> FenceStatistics:
        return FenceStatistics(self._admitted, self._fenced, self._duplicates)


@dataclass(frozen=True)
class Stall:
    """A stretch of time in which the worker's loop made no progress."""

    last_progress_seconds: float
    """When the loop last made progress before the stall."""
    detected_seconds: float
    """When the stall was noticed."""

    @property
    def stalled_seconds(self) -> float:
        return self.detected_seconds - self.last_progress_seconds


class StallWatchdog:
    """Tells a worker to stop emitting once its loop has made no progress for longer than
    ``stall_threshold_seconds``. Deterministic: every call takes ``now_seconds`` from one
    monotonic clock (``time.monotonic()`` in the shell).

    The loop calls :meth:`progress` each time it gets something done (a pull returned, a
    heartbeat was sent), and :meth:`may_emit` just before publishing each result. A stall
    is noticed by whichever call comes first after it (after a SIGSTOP, the resumed heartbeat
    may run before the emitter: :meth:`progress` notices the gap too), and it is *latched*:
    :meth:`may_emit` stays False until the worker has given up its partitions, dropped what
    it held, and called :meth:`recover`.

    Rule of thumb: a threshold below both the pin timeout and the heartbeat timeout, minus
    the longest time the loop may spend between two progress calls (a pull's expiry), so a
    worker always notices it may have lost a partition before another can have taken it.
    With a 1 s pin timeout and pulls that expire after 0.25 s, 0.5 s.
    """

    def __init__(self, *, stall_threshold_seconds: float, now_seconds: float) -> None:
        if not math.isfinite(stall_threshold_seconds) or stall_threshold_seconds <= 0:
            raise ValueError(
                f"stall_threshold_seconds must be a finite number > 0, "
                f"got {stall_threshold_seconds}"
            )
        self._threshold = stall_threshold_seconds
        self._last = now_seconds
        self._stall: Stall | None = None
        self._stalls = 0

    @property
    def stall_threshold_seconds(self) -> float:
        return self._threshold

    @property
    def stalled(self) -> Stall | None:
        """The latched stall, or None while the worker may emit (as far as it last knew)."""
        return self._stall

    @property
    def stalls(self) -> int:
        """Stalls noticed since the watchdog was made."""
        return self._stalls

    def progress(self, now_seconds: float) -> Stall | None:
        """Record progress of the loop. Returns the stall this call noticed (the time since
        the previous progress exceeded the threshold), else None; the latched stall is not
        cleared by progress."""
        noticed = self._notice(now_seconds)
        self._last = max(self._last, now_seconds)
        return noticed

    def may_emit(self, now_seconds: float) -> bool:
        """False once a stall is latched, including one noticed by this very call (no
        progress for longer than the threshold up to ``now_seconds``)."""
        self._notice(now_seconds)
        return self._stall is None

    def recover(self, now_seconds: float) -> None:
        """Clear the latch: call once the worker has dropped its held frames and results,
        given up its partitions and is about to rejoin with new claims."""
        self._stall = None
        self._last = now_seconds

    def _notice(self, now_seconds: float) -> Stall | None:
        if self._stall is not None or now_seconds - self._last <= self._threshold:
            return None
        self._stall = Stall(self._last, now_seconds)
        self._stalls += 1
        return self._stall
