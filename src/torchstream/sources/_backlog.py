"""How far a live source's reading has fallen behind its stream: a sans-IO estimate from
packet receive times and timestamps, used to skip decoding and to measure lag."""

from __future__ import annotations

__all__ = ["Backlog"]

_DRIFT = 2e-4
"""Clock drift (seconds per second) between a sender and us that is not taken for backlog."""

_JUMP_SECONDS = 1.0
"""A change of (receive time - stream time) this large between two packets is a jump of the
stream's clock (RTCP resynchronisation, a sender restart), not backlog."""


class Backlog:
    """How far reading has fallen behind the stream, from packet receive times and their
    timestamps (dts: monotonic in decode order).

    When decoding is slower than the stream, packets wait in socket buffers, so each is
    read a little later than the previous one plus its frame interval: ``receive time -
    stream time`` grows in small steps above its smallest value (the baseline). One big
    step is a jump of the stream's clock instead (RTCP sync, a sender restart): the
    baseline moves with it. The baseline also creeps up by :data:`_DRIFT`, so a sender's
    clock that runs slow is not taken for backlog.
    """

    def __init__(self) -> None:
        self._baseline = 0.0
        self._previous: tuple[float, float] | None = None

    def update(self, now: float, stamp: float) -> float:
        offset = now - stamp
        if self._previous is None:
            self._baseline = offset
        else:
            elapsed = now - self._previous[0]
            step = offset - (self._previous[0] - self._previous[1])
            if abs(step) > _JUMP_SECONDS:
                self._baseline += step
            else:
                self._baseline += _DRIFT * elapsed
            self._baseline = min(self._baseline, offset)
        self._previous = (now, stamp)
        return offset - self._baseline
