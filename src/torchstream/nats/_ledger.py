"""Per-camera rules of the worker that owns a camera's partition: for every message, process
it, decode it only, or acknowledge and drop it with a counted reason. Sans-IO.

One :class:`StreamLedger` per source, created when this worker starts owning it. It keeps
the two promises of the scale-out layer: processed seqs strictly increase (no duplicate, no
out-of-order result, whatever the broker redelivers), and every published frame that yields
no result is counted under a reason (see :data:`FRAME_LOSS_REASONS`).

How a new owner starts (the *handover*):

- It learns ``handover_seq``, the last seq the previous owner produced a result for (the
  last message of ``ts.out.<source>``), or None when unknown. If workers publish their drop
  records beside their results, the last seq *decided* (result or drop) is better still:
  fewer frames are then counted twice.
- It holds the first live delivery, ``F``. If the source's last keyframe at or before ``F``
  is still in the stream, it *replays* from that keyframe up to ``F - 1`` straight from the
  stream (:meth:`StreamLedger.begin_replay`, :meth:`~StreamLedger.on_replay`,
  :meth:`~StreamLedger.end_replay`): frames at or below ``handover_seq`` are decoded only
  (their results exist), frames above it were in flight at the previous owner and are
  processed. A graceful move loses nothing, a crash loses nothing that is still in the
  stream.
- Without a replay, it drops frames until the first keyframe (``failover_keyframe``).
- The frames between ``handover_seq`` and ``F`` that it did not replay form the *takeover
  window*: the broker redelivers the dead owner's unacknowledged frames only after their ack
  wait, after newer ones, so they can no longer be placed in order and are dropped once each
  as ``failover_inflight``. Those that never come back are counted by
  :meth:`StreamLedger.close_window`, an ack wait after the takeover.

``handover_seq`` None means *unknown* (the lookup failed): nothing below the first live
frame can then be placed or counted except redeliveries. A source that never had a result
has a known handover point: one below its first seq (-1 when seqs start at 0).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "FRAME_LOSS_REASONS",
    "REPEAT_REASONS",
    "Action",
    "Delivery",
    "DropRecord",
    "Ledger",
    "LedgerStatistics",
    "StreamLedger",
    "Verdict",
]

FRAME_LOSS_REASONS = (
    "failover_inflight",
    "failover_keyframe",
    "broker_discard",
    "gap",
    "resync_keyframe",
    "fenced",
    "result_unconfirmed",
    "late",
)
"""Reasons that each stand for published frames that yield no result, so that, per camera,
``published = processed + frames dropped under these reasons``. ``gap`` is a hole in the
seqs of unknown cause; ``broker_discard`` a hole the broker's limits made;
``resync_keyframe`` a frame after such a hole, before the next keyframe (its decoder lacks
the pictures it refers to: fed to it, it would yield a broken picture, or none at all);
``fenced`` a result dropped because its worker lost the partition (see
``torchstream.nats._fence``); ``result_unconfirmed`` a result published that the results
stream never confirmed (the worker's server died with it in flight): it may have reached
no sink, and is counted in case (redundant where it did); ``late`` a frame that waited in the
stream longer than the worker's ``max_frame_age_seconds`` (an overloaded group sheds its
oldest frames itself, quickly, before the stream's max age removes frames unseen)."""

REPEAT_REASONS = ("duplicate",)
"""Reasons for dropping a message whose frame is already accounted for (processed, dropped
or counted in a hole): a redelivery, not a lost frame. Not part of the invariant."""


class Action(enum.Enum):
    """What the worker does with a message. It acknowledges every delivered message
    whatever the action (after publishing the result, for PROCESS); replayed ones, read
    straight from the stream, need no acknowledgement."""

    PROCESS = "process"
    """Decode it and run the pipeline on it: it yields one result."""
    DECODE_ONLY = "decode_only"
    """Feed it to the decoder to rebuild its reference frames, run no inference."""
    SKIP = "skip"
    """A replayed frame that neither needs a result nor can be decoded: ignore it, count
    nothing (the previous owner accounted for it)."""
    DROP = "drop"
    """Acknowledge and drop it, counted under :attr:`Verdict.reason`."""


@dataclass(frozen=True)
class Delivery:
    """One message of a source as the worker received it (from the wire header and the
    JetStream metadata)."""

    seq: int
    """The source's sequence number (from our wire header)."""
    keyframe: bool
    """It starts a decodable group (an IDR frame, or any still image)."""
    stream_seq: int
    """The broker's stream sequence of the message."""
    delivery_count: int = 1
    """JetStream's delivery count: 1 on first delivery, more for redeliveries."""


@dataclass(frozen=True)
class DropRecord:
    """Frames ``first_seq .. last_seq`` (inclusive) of ``source_id`` dropped for ``reason``.
    One seq for a dropped message, a range for a hole in the seqs."""

    source_id: str
    first_seq: int
    last_seq: int
    reason: str

    @property
    def frames(self) -> int:
        return self.last_seq - self.first_seq + 1

    def seqs(self) -> range:
        return range(self.first_seq, self.last_seq + 1)


@dataclass(frozen=True)
class Verdict:
    """The decision for one message, and what it counted."""

    action: Action
    reason: str | None = None
    """Why it is dropped (None unless ``action is Action.DROP``)."""
    drops: tuple[DropRecord, ...] = ()
    """What this decision counted: a hole in the seqs just before this message, and/or this
    message itself if dropped. Forward them to whoever checks the accounting."""


@dataclass(frozen=True)
class LedgerStatistics:
    """Counts of one stream, or summed over streams."""

    processed: int = 0
    decoded_only: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    """Frames (for loss reasons) or messages (for ``duplicate``) dropped, by reason."""

    @property
    def frames_lost(self) -> int:
        return sum(n for r, n in self.dropped.items() if r not in REPEAT_REASONS)


class StreamLedger:
    """The rules for one source while this worker owns it. See the module docstring for the
    handover; :meth:`on_delivery` for the live rules. Not thread-safe: one owner loop."""

    def __init__(self, source_id: str, *, handover_seq: int | None = None) -> None:
        self.source_id = source_id
        self.handover_seq = handover_seq
        # Highest seq decided in order by this owner (or the handover point): anything at or
        # below it is a repeat, or a late frame of the takeover window.
        self._floor: int | None = handover_seq
        self._last_processed: int | None = None
        self._last_stream_seq: int | None = None
        self._synced = False  # the decoder has a keyframe and every frame since
        self._unsynced_reason = "failover_keyframe"  # why frames wait for a keyframe
        self._live = False
        self._replaying = False
        self._replay_last: int | None = None
        self._replay_first: int | None = None
        # Takeover window: seqs in (low, high) exclusive that this owner did not decide in
        # order; `low` None means unbounded (handover point unknown).
        self._window: tuple[int | None, int] | None = None
        self._window_done: set[int] = set()
        self._processed = 0
        self._decoded_only = 0
        self._dropped: dict[str, int] = {}

    @property
    def last_processed_seq(self) -> int | None:
        return self._last_processed

    @property
    def last_stream_seq(self) -> int | None:
        """The stream sequence of the last frame decided live (None before the first)."""
        return self._last_stream_seq

    @property
    def floor_seq(self) -> int | None:
        """The highest seq decided in order (the handover point before anything arrived)."""
        return self._floor

    def begin_replay(self, *, until_seq: int) -> None:
        """Start replaying from the stream, before the first live delivery, whose seq is
        ``until_seq``: replayed frames must be below it. Call at most once."""
        if self._live or self._replaying or self._window is not None:
            raise RuntimeError(f"{self.source_id}: replay must come once, before live frames")
        if self.handover_seq is not None and until_seq <= self.handover_seq:
            raise ValueError(
                f"until_seq must be above handover_seq={self.handover_seq}, got {until_seq}"
            )
        self._replaying = True
        self._window = (self.handover_seq, until_seq)

    def on_replay(self, message: Delivery) -> Verdict:
        """Decide for a frame read straight from the stream during a replay, in stream order.

        At or below ``handover_seq`` (or any frame when it is unknown): DECODE_ONLY from the
        first keyframe on, SKIP before it. Above it (the previous owner's frames in flight):
        PROCESS from the first keyframe on, ``failover_keyframe`` before it."""
        if not self._replaying or self._window is None:
            raise RuntimeError(f"{self.source_id}: on_replay outside begin/end_replay")
        seq = message.seq
        if seq >= self._window[1] or (self._replay_last is not None and seq <= self._replay_last):
            return Verdict(Action.SKIP)  # the live delivery, or a repeat: not ours to count
        self._replay_last = seq
        if self._replay_first is None:
            self._replay_first = seq
        if message.keyframe:
            self._synced = True
        h = self.handover_seq
        if h is None or seq <= h:
            if not self._synced:
                return Verdict(Action.SKIP)
            self._decoded_only += 1
            return Verdict(Action.DECODE_ONLY)
        self._window_done.add(seq)
        self._floor = seq
        if not self._synced:
            return self._drop(seq, "failover_keyframe")
        self._processed += 1
        self._last_processed = seq
        return Verdict(Action.PROCESS)

    def end_replay(self, *, complete: bool) -> tuple[DropRecord, ...]:
        """Finish the replay. ``complete``: every message of the source from the first
        replayed one up to ``until_seq`` was read. Then the window's seqs after the first
        replayed one that never showed up are not in the stream (discarded or never
        published) and are counted now as ``gap``; seqs before it stay in the window.
        Counts nothing when ``handover_seq`` is unknown. Returns what it counted."""
        if not self._replaying or self._window is None:
            raise RuntimeError(f"{self.source_id}: end_replay without begin_replay")
        self._replaying = False
        low, high = self._window
        if not complete or self._replay_first is None or low is None:
            # Without a handover point the replay only decoded: nothing in the window was
            # decided, so a late redelivery is still counted as `failover_inflight`.
            return ()
        return self._count_missing(max(self._replay_first, low + 1), high, "gap")

    def on_delivery(
        self, message: Delivery, *, stream_first_seq: int | None = None, late: bool = False
    ) -> Verdict:
        """Decide for a message delivered by the partition's consumer.

        - At or below the floor: a frame of the takeover window seen for the first time is
          ``failover_inflight``; anything else is a ``duplicate``.
        - The first frame above the floor starts the live flow (no hole is counted before
          it: that is the takeover window).
        - Later, a hole before the frame is counted: ``broker_discard`` if
          ``stream_first_seq`` (the stream's first sequence, as last learned) is past the
          stream sequence of the previous frame, i.e. the broker's limits removed what
          followed it, else ``gap``.
        - The frame itself is processed once the decoder is synced (a keyframe seen since
          the start, in the replay or live), else dropped as ``failover_keyframe``. After a
          hole the decoder is out of sync again: frames up to the next keyframe are dropped
          as ``resync_keyframe``.
        - A ``late`` frame (it waited in the stream too long) that would be processed is
          dropped as ``late`` instead, and the frames after it wait for a keyframe (the
          decoder lacks it): shedding load costs an acknowledgement, not a decode.
        """
        if self._replaying:
            raise RuntimeError(f"{self.source_id}: live delivery before end_replay")
        seq = message.seq
        if self._floor is not None and seq <= self._floor:
            if self._in_window(seq) and seq not in self._window_done:
                self._window_done.add(seq)
                return self._drop(seq, "failover_inflight")
            return self._drop(seq, "duplicate")
        records: list[DropRecord] = []
        if not self._live:
            self._live = True
            if self._window is None:
                self._window = (self.handover_seq, seq)
        elif self._floor is not None and seq > self._floor + 1:
            reason = "broker_discard" if self._discarded(stream_first_seq) else "gap"
            records.append(self._count_range(self._floor + 1, seq - 1, reason))
            if self._synced:
                self._synced, self._unsynced_reason = False, "resync_keyframe"
        self._floor = seq
        self._last_stream_seq = message.stream_seq
        if message.keyframe:
            self._synced = True
        if not self._synced or late:
            own = self._drop(seq, "late" if late else self._unsynced_reason)
            if late:
                self._synced, self._unsynced_reason = False, "resync_keyframe"
            return Verdict(Action.DROP, own.reason, (*records, *own.drops))
        self._processed += 1
        self._last_processed = seq
        return Verdict(Action.PROCESS, None, tuple(records))

    def on_end_of_stream(
        self, last_seq: int | None, *, stream_first_seq: int | None = None
    ) -> tuple[DropRecord, ...]:
        """The source's end of stream, whose ``last_seq`` is its last frame's seq (None: not
        said): count the frames up to it that never reached this owner, then the takeover
        window (as :meth:`close_window`). Nothing of the source can follow its end in the
        stream, so what is missing now is missing for good:

        - after live frames, the seqs above the last one are a hole like any other:
          ``broker_discard`` when ``stream_first_seq`` shows the broker's limits removed
          what followed that frame (a camera's last frames left waiting past the stream's
          max age), else ``gap``;
        - before any live frame (the end is the first message since the claim), the seqs
          above the handover point were in flight at the previous owner, or discarded:
          ``failover_inflight`` (a redelivery of one later is a duplicate: see the
          partition's ``ended``). Nothing is counted while the handover point is unknown."""
        if self._replaying:
            raise RuntimeError(f"{self.source_id}: end of stream before end_replay")
        records: list[DropRecord] = []
        if last_seq is not None:
            if self._live and self._floor is not None and last_seq > self._floor:
                reason = "broker_discard" if self._discarded(stream_first_seq) else "gap"
                records.append(self._count_range(self._floor + 1, last_seq, reason))
                self._floor = last_seq
            elif not self._live and self.handover_seq is not None:
                self._live = True
                self._window = (self.handover_seq, max(last_seq + 1, self.handover_seq + 1))
                self._floor = max(last_seq, self.handover_seq)
        records.extend(self.close_window())
        return tuple(records)

    def unexplained_hole(self, seq: int, *, stream_first_seq: int | None) -> bool:
        """Whether a live delivery of ``seq`` would count a hole before it that
        ``stream_first_seq`` does not show as the broker's doing: ask the server for the
        stream's first sequence again before :meth:`on_delivery` (it may have moved since)."""
        return (
            self._live
            and self._floor is not None
            and seq > self._floor + 1
            and not self._discarded(stream_first_seq)
        )

    def _discarded(self, stream_first_seq: int | None) -> bool:
        """The broker removed what followed this source's last live frame: the stream now
        starts past that frame's successor."""
        return (
            stream_first_seq is not None
            and self._last_stream_seq is not None
            and stream_first_seq > self._last_stream_seq + 1
        )

    def close_window(self) -> tuple[DropRecord, ...]:
        """Count the takeover window's seqs that never arrived as ``failover_inflight`` and
        treat any later arrival there as a ``duplicate``. Call once the dead owner's frames
        can no longer come back: an ack wait plus a pin timeout after the takeover. They were
        in flight at the previous owner and its acknowledgement was the last we heard of
        them, or the broker discarded them. Counts nothing while the handover point is
        unknown (the window has no lower end) or before the first live frame."""
        if self._window is None or not self._live:
            return ()
        low, high = self._window
        if low is None:
            return ()
        records = self._count_missing(low + 1, high, "failover_inflight")
        self._window = None
        self._window_done.clear()
        return records

    def statistics(self) -> LedgerStatistics:
        return LedgerStatistics(self._processed, self._decoded_only, dict(self._dropped))

    def _in_window(self, seq: int) -> bool:
        if self._window is None:
            return False
        low, high = self._window
        return (low is None or seq > low) and seq < high

    def _count_missing(self, start: int, stop: int, reason: str) -> tuple[DropRecord, ...]:
        """Count the seqs in ``start .. stop - 1`` not yet decided in the window, by runs."""
        records = []
        run_start: int | None = None
        for seq in range(start, stop + 1):
            missing = seq < stop and seq not in self._window_done
            if missing:
                self._window_done.add(seq)
                if run_start is None:
                    run_start = seq
            elif run_start is not None:
                records.append(self._count_range(run_start, seq - 1, reason))
                run_start = None
        return tuple(records)

    def _drop(self, seq: int, reason: str) -> Verdict:
        return Verdict(Action.DROP, reason, (self._count_range(seq, seq, reason),))

    def _count_range(self, first: int, last: int, reason: str) -> DropRecord:
        record = DropRecord(self.source_id, first, last, reason)
        self._dropped[reason] = self._dropped.get(reason, 0) + record.frames
        return record


class Ledger:
    """The :class:`StreamLedger` of every source this worker owns now."""

    def __init__(self) -> None:
        self._streams: dict[str, StreamLedger] = {}
        self._retired = LedgerStatistics()

    def stream(self, source_id: str, *, handover_seq: int | None = None) -> StreamLedger:
        """The ledger of ``source_id``, created (with ``handover_seq``) if it has none."""
        ledger = self._streams.get(source_id)
        if ledger is None:
            ledger = self._streams[source_id] = StreamLedger(source_id, handover_seq=handover_seq)
        return ledger

    def get(self, source_id: str) -> StreamLedger | None:
        return self._streams.get(source_id)

    def __contains__(self, source_id: object) -> bool:
        return source_id in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    def release(self, source_ids: Iterable[str]) -> None:
        """Forget these sources (their partition moved away); their counts stay in
        :meth:`statistics`. If the partition comes back, a new ledger starts from a new
        handover point."""
        for source_id in source_ids:
            ledger = self._streams.pop(source_id, None)
            if ledger is not None:
                self._retired = _add(self._retired, ledger.statistics())

    def statistics(self) -> LedgerStatistics:
        """Counts summed over current and released sources."""
        total = self._retired
        for ledger in self._streams.values():
            total = _add(total, ledger.statistics())
        return total


def _add(a: LedgerStatistics, b: LedgerStatistics) -> LedgerStatistics:
    dropped = dict(a.dropped)
    for reason, n in b.dropped.items():
        dropped[reason] = dropped.get(reason, 0) + n
    return LedgerStatistics(a.processed + b.processed, a.decoded_only + b.decoded_only, dropped)
