"""The per-camera rules of a partition's owner: one test per rule, then a simulated crash
and takeover, checked by the accounting."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchstream.nats._accounting import Accounting, ResultRecord
from torchstream.nats._ledger import (
    FRAME_LOSS_REASONS,
    Action,
    Delivery,
    DropRecord,
    Ledger,
    StreamLedger,
    Verdict,
)

GOP = 10


def d(seq: int, *, dc: int = 1, gop: int = GOP) -> Delivery:
    """A message of camera `cam`: keyframe every `gop` frames, stream seqs interleaved with
    another camera's (odd ones are ours)."""
    return Delivery(seq=seq, keyframe=seq % gop == 0, stream_seq=2 * seq + 1, delivery_count=dc)


def actions(ledger: StreamLedger, seqs: list[int]) -> list[tuple[int, Action, str | None]]:
    out = []
    for seq in seqs:
        verdict = ledger.on_delivery(d(seq))
        out.append((seq, verdict.action, verdict.reason))
    return out


def test_a_steady_stream_is_processed_in_order() -> None:
    ledger = StreamLedger("cam", handover_seq=-1)
    assert all(a is Action.PROCESS for _, a, _ in actions(ledger, list(range(25))))
    assert ledger.last_processed_seq == 24
    stats = ledger.statistics()
    assert (stats.processed, stats.dropped, stats.frames_lost) == (25, {}, 0)


def test_a_redelivery_of_a_decided_frame_is_a_duplicate_not_a_loss() -> None:
    ledger = StreamLedger("cam", handover_seq=-1)
    actions(ledger, [0, 1, 2, 3])
    verdict = ledger.on_delivery(d(2, dc=2))
    assert verdict == Verdict(Action.DROP, "duplicate", (DropRecord("cam", 2, 2, "duplicate"),))
    assert ledger.statistics().frames_lost == 0
    assert ledger.last_processed_seq == 3


def test_a_hole_of_unknown_cause_is_a_gap() -> None:
    ledger = StreamLedger("cam", handover_seq=-1)
    actions(ledger, [0, 1])
    verdict = ledger.on_delivery(d(5))
    assert verdict.action is Action.DROP  # the decoder lacks 2..4: wait for a keyframe
    assert verdict.drops == (
        DropRecord("cam", 2, 4, "gap"),
        DropRecord("cam", 5, 5, "resync_keyframe"),
    )
    assert actions(ledger, [6, 7, 8, 9, 10, 11]) == [
        *((s, Action.DROP, "resync_keyframe") for s in range(6, 10)),
        (10, Action.PROCESS, None),
        (11, Action.PROCESS, None),
    ]
    assert ledger.statistics().dropped == {"gap": 3, "resync_keyframe": 5}
    # A hole just before a keyframe costs nothing more.
    assert actions(ledger, [20]) == [(20, Action.PROCESS, None)]
    assert ledger.statistics().dropped == {"gap": 11, "resync_keyframe": 5}


def test_a_hole_the_broker_made_is_a_broker_discard() -> None:
    ledger = StreamLedger("cam", handover_seq=-1)
    actions(ledger, [0, 1])  # stream seq of 1 is 3
    assert ledger.unexplained_hole(5, stream_first_seq=4)  # ask the server again
    assert not ledger.unexplained_hole(5, stream_first_seq=9)
    assert not ledger.unexplained_hole(2, stream_first_seq=None)  # no hole
    verdict = ledger.on_delivery(d(5), stream_first_seq=9)  # the broker dropped 4..8
    assert verdict.drops[0] == DropRecord("cam", 2, 4, "broker_discard")
    # A first sequence not past the previous message says nothing: an unknown gap.
    verdict = ledger.on_delivery(d(8), stream_first_seq=11)
    assert verdict.drops[0] == DropRecord("cam", 6, 7, "gap")


def test_an_end_of_stream_counts_the_last_frames_that_never_came() -> None:
    # The camera's last frames waited past the stream's max age and the broker removed
    # them: no later frame shows the hole, its end of stream (with its last seq) does.
    ledger = StreamLedger("cam", handover_seq=-1)
    actions(ledger, [0, 1, 2])  # stream seq of 2 is 5
    assert ledger.unexplained_hole(7, stream_first_seq=5)
    records = ledger.on_end_of_stream(6, stream_first_seq=40)
    assert records == (DropRecord("cam", 3, 6, "broker_discard"),)
    assert ledger.on_delivery(d(4, dc=2)).reason == "duplicate"  # counted already
    # Without the broker's doing in sight the same hole is a gap; nothing missing, nothing.
    ledger = StreamLedger("cam", handover_seq=-1)
    actions(ledger, [0, 1, 2])
    assert ledger.on_end_of_stream(4) == (DropRecord("cam", 3, 4, "gap"),)
    ledger = StreamLedger("cam", handover_seq=-1)
    actions(ledger, [0, 1, 2])
    assert ledger.on_end_of_stream(2) == ()
    assert ledger.on_end_of_stream(None) == ()


def test_an_end_of_stream_counts_the_window_after_the_holes() -> None:
    ledger = StreamLedger("cam", handover_seq=10)
    actions(ledger, [20, 21])  # 11..19 in flight at the previous owner
    ledger.on_delivery(d(12, dc=2))  # came back
    assert ledger.on_end_of_stream(23) == (
        DropRecord("cam", 22, 23, "gap"),
        DropRecord("cam", 11, 11, "failover_inflight"),
        DropRecord("cam", 13, 19, "failover_inflight"),
    )


def test_an_end_of_stream_first_after_a_takeover_counts_from_the_handover_point() -> None:
    # The previous owner published results up to 4 and held 5..9 when it lost the camera;
    # the end is the first message the new owner gets: 5..9 are lost in flight.
    ledger = StreamLedger("cam", handover_seq=4)
    assert ledger.on_end_of_stream(9) == (DropRecord("cam", 5, 9, "failover_inflight"),)
    assert ledger.on_delivery(d(7, dc=2)).reason == "duplicate"
    # Results up to the end: nothing to count. Unknown handover point: nothing can be.
    assert StreamLedger("cam", handover_seq=9).on_end_of_stream(9) == ()
    assert StreamLedger("cam", handover_seq=None).on_end_of_stream(9) == ()


def test_a_late_frame_is_dropped_and_the_decoder_waits_for_a_keyframe() -> None:
    ledger = StreamLedger("cam", handover_seq=-1)
    actions(ledger, [0, 1, 2])
    verdict = ledger.on_delivery(d(3), late=True)
    assert verdict == Verdict(Action.DROP, "late", (DropRecord("cam", 3, 3, "late"),))
    # The decoder lacks 3: the frames up to the next keyframe cannot be decoded.
    assert actions(ledger, list(range(4, 11))) == [
        *((s, Action.DROP, "resync_keyframe") for s in range(4, 10)),
        (10, Action.PROCESS, None),
    ]
    # A late frame is still a repeat when it is one (counted once, as a duplicate).
    assert ledger.on_delivery(d(10, dc=2), late=True).reason == "duplicate"
    assert ledger.statistics().dropped == {"late": 1, "resync_keyframe": 6, "duplicate": 1}
    assert "late" in FRAME_LOSS_REASONS


def test_a_takeover_without_replay_waits_for_a_keyframe() -> None:
    ledger = StreamLedger("cam", handover_seq=12)
    got = actions(ledger, [15, 16, 17, 18, 19, 20, 21])
    assert got[:5] == [(s, Action.DROP, "failover_keyframe") for s in range(15, 20)]
    assert got[5:] == [(20, Action.PROCESS, None), (21, Action.PROCESS, None)]
    # 13 and 14 (the takeover window) are not counted as a gap at once: they may come back.
    assert ledger.statistics().dropped == {"failover_keyframe": 5}


def test_frames_in_flight_at_the_dead_owner_come_back_late_and_are_dropped_once() -> None:
    # The pin moved without waiting for the dead owner's unacknowledged 13..14; the broker
    # redelivers them after its ack wait, after newer frames were processed.
    ledger = StreamLedger("cam", handover_seq=12)
    actions(ledger, [20, 21, 22])
    assert ledger.on_delivery(d(13, dc=2)).reason == "failover_inflight"
    assert ledger.on_delivery(d(14, dc=2)).reason == "failover_inflight"
    assert ledger.on_delivery(d(13, dc=3)).reason == "duplicate"
    # At or below the handover point: the previous owner produced it.
    assert ledger.on_delivery(d(12, dc=2)).reason == "duplicate"
    # Frames of the window that never come back are counted when the window closes.
    assert ledger.close_window() == (DropRecord("cam", 15, 19, "failover_inflight"),)
    assert ledger.on_delivery(d(16, dc=2)).reason == "duplicate"
    assert ledger.statistics().dropped == {"failover_inflight": 7, "duplicate": 3}


def test_an_unknown_handover_point_drops_every_late_frame_below_the_first() -> None:
    ledger = StreamLedger("cam", handover_seq=None)
    actions(ledger, [20, 21])
    assert ledger.on_delivery(d(3, dc=2)).reason == "failover_inflight"
    assert ledger.on_delivery(d(3, dc=2)).reason == "duplicate"
    assert ledger.close_window() == ()  # no lower end: nothing to count


def test_an_in_order_redelivery_is_processed() -> None:
    # If the ack wait ran out before the new owner's first pull, the dead owner's frames
    # come first and in order: nothing is lost.
    ledger = StreamLedger("cam", handover_seq=9)
    got = actions(ledger, [10, 11, 12])
    assert [a for _, a, _ in got] == [Action.PROCESS] * 3


def test_a_graceful_move_replays_and_loses_nothing() -> None:
    # The old owner finished 0..14 and acknowledged them; the new owner's first delivery is
    # 15, a P-frame: it replays 10..14 from the stream, decoding only.
    ledger = StreamLedger("cam", handover_seq=14)
    ledger.begin_replay(until_seq=15)
    replayed = [ledger.on_replay(d(s)).action for s in range(10, 15)]
    assert replayed == [Action.DECODE_ONLY] * 5
    assert ledger.end_replay(complete=True) == ()
    assert [a for _, a, _ in actions(ledger, list(range(15, 30)))] == [Action.PROCESS] * 15
    assert ledger.close_window() == ()
    stats = ledger.statistics()
    assert (stats.processed, stats.decoded_only, stats.frames_lost) == (15, 5, 0)


def test_a_crash_with_replay_processes_the_frames_that_were_in_flight() -> None:
    ledger = StreamLedger("cam", handover_seq=12)
    ledger.begin_replay(until_seq=17)
    got = [ledger.on_replay(d(s)).action for s in range(10, 17)]
    assert got == [Action.DECODE_ONLY] * 3 + [Action.PROCESS] * 4
    ledger.end_replay(complete=True)
    assert ledger.on_delivery(d(17)).action is Action.PROCESS
    assert ledger.on_delivery(d(14, dc=2)).reason == "duplicate"  # already processed
    assert ledger.statistics().frames_lost == 0


def test_a_replay_from_a_keyframe_inside_the_window() -> None:
    # Handover at 8, keyframe at 10, first delivery 13: 9 cannot be decoded; it stays in the
    # window (the dead owner may still get it redelivered). 11 is missing from the stream.
    ledger = StreamLedger("cam", handover_seq=8)
    ledger.begin_replay(until_seq=13)
    assert [ledger.on_replay(d(s)).action for s in (10, 12)] == [Action.PROCESS] * 2
    assert ledger.end_replay(complete=True) == (DropRecord("cam", 11, 11, "gap"),)
    assert ledger.on_delivery(d(13)).action is Action.PROCESS
    assert ledger.on_delivery(d(9, dc=2)).reason == "failover_inflight"
    assert ledger.on_delivery(d(11, dc=2)).reason == "duplicate"


def test_a_replay_that_does_not_start_at_a_keyframe() -> None:
    ledger = StreamLedger("cam", handover_seq=12)
    ledger.begin_replay(until_seq=22)
    got = [ledger.on_replay(d(s)).action for s in range(11, 22)]
    # 11, 12: the previous owner's, undecodable: skipped. 13..19: ours, undecodable.
    assert got[:2] == [Action.SKIP] * 2
    assert got[2:9] == [Action.DROP] * 7
    assert got[9:] == [Action.PROCESS] * 2
    assert ledger.end_replay(complete=True) == ()
    assert ledger.statistics().dropped == {"failover_keyframe": 7}


def test_a_replay_without_a_handover_point_only_decodes() -> None:
    ledger = StreamLedger("cam", handover_seq=None)
    ledger.begin_replay(until_seq=15)
    assert {ledger.on_replay(d(s)).action for s in range(10, 15)} == {Action.DECODE_ONLY}
    assert ledger.end_replay(complete=True) == ()
    assert ledger.on_delivery(d(15)).action is Action.PROCESS
    assert ledger.on_delivery(d(13, dc=2)).reason == "failover_inflight"


def test_an_incomplete_replay_counts_nothing() -> None:
    ledger = StreamLedger("cam", handover_seq=8)
    ledger.begin_replay(until_seq=15)
    ledger.on_replay(d(10))
    assert ledger.end_replay(complete=False) == ()
    ledger.on_delivery(d(15))
    assert ledger.on_delivery(d(12, dc=2)).reason == "failover_inflight"


def test_replay_skips_what_it_must_not_decide() -> None:
    ledger = StreamLedger("cam", handover_seq=8)
    ledger.begin_replay(until_seq=12)
    ledger.on_replay(d(10))
    assert ledger.on_replay(d(10)).action is Action.SKIP  # a repeat
    assert ledger.on_replay(d(12)).action is Action.SKIP  # the live delivery itself


def test_misuse_is_refused() -> None:
    ledger = StreamLedger("cam", handover_seq=8)
    with pytest.raises(RuntimeError, match="outside begin/end_replay"):
        ledger.on_replay(d(9))
    with pytest.raises(RuntimeError, match="without begin_replay"):
        ledger.end_replay(complete=True)
    with pytest.raises(ValueError, match="until_seq must be above handover_seq=8, got 8"):
        ledger.begin_replay(until_seq=8)
    ledger.begin_replay(until_seq=12)
    with pytest.raises(RuntimeError, match="before end_replay"):
        ledger.on_delivery(d(12))
    ledger.end_replay(complete=False)
    with pytest.raises(RuntimeError, match="once, before live frames"):
        ledger.begin_replay(until_seq=20)


def test_the_ledger_of_all_sources_keeps_released_counts() -> None:
    ledger = Ledger()
    cam = ledger.stream("cam", handover_seq=-1)
    assert ledger.stream("cam", handover_seq=99) is cam  # get, not replace
    for seq in (0, 1, 3):
        cam.on_delivery(d(seq))
    ledger.stream("other", handover_seq=-1).on_delivery(d(0))
    assert len(ledger) == 2 and "cam" in ledger
    ledger.release(["cam", "unknown"])
    assert ledger.get("cam") is None
    stats = ledger.statistics()
    assert (stats.processed, stats.dropped) == (3, {"gap": 1, "resync_keyframe": 1})


# A simulated crash and takeover ------------------------------------------------------------


@st.composite
def takeovers(draw: st.DrawFn) -> dict[str, object]:
    frames = draw(st.integers(5, 80))
    crash = draw(st.integers(0, frames - 2))
    inflight = draw(st.integers(0, min(8, frames - 1 - crash)))
    discarded = draw(st.sets(st.integers(0, frames - 2), max_size=frames // 4))
    return {
        "frames": frames,
        "gop": draw(st.integers(1, 12)),
        "crash": crash,
        "inflight": inflight,
        "discarded": discarded,
        "replay": draw(st.booleans()),
        "handover_at_floor": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@settings(deadline=None, max_examples=300)
@given(case=takeovers())
def test_a_crash_and_takeover_accounts_for_every_frame(case: dict[str, object]) -> None:
    """Worker A owns the camera from seq 0 and crashes at `crash` holding `inflight`
    unacknowledged frames; the broker discarded some frames; worker B takes over (with or
    without replay), receives A's frames again at random places among newer ones, and
    redeliveries of its own. Every published frame is processed once or counted."""
    frames, gop, crash, inflight = (int(case[k]) for k in ("frames", "gop", "crash", "inflight"))
    discarded: set[int] = case["discarded"]  # type: ignore[assignment]
    rng = random.Random(int(case["seed"]))  # type: ignore[call-overload]
    accounting = Accounting()
    accounting.published("cam", range(frames))

    def record(worker: str, seq: int, verdict: Verdict) -> None:
        accounting.drops(verdict.drops)
        if verdict.action is Action.PROCESS:
            accounting.result(ResultRecord("cam", seq, worker, 1 if worker == "A" else 2))

    a = StreamLedger("cam", handover_seq=-1)
    delivered: list[int] = []
    for seq in range(crash):
        if seq in discarded:
            continue
        record("A", seq, a.on_delivery(d(seq, gop=gop)))
        delivered.append(seq)
        if rng.random() < 0.2:
            again = rng.choice(delivered)
            assert a.on_delivery(d(again, dc=2, gop=gop)).reason == "duplicate"
    # A lived past an ack wait: its own takeover window (of the camera's start) is closed.
    accounting.drops(a.close_window())

    # B learns the handover point from the last thing A published for the camera: its last
    # result, or its last decision if drops are published too.
    last = a.floor_seq if case["handover_at_floor"] else a.last_processed_seq
    b = StreamLedger("cam", handover_seq=-1 if last is None else last)
    late = [s for s in range(crash, crash + inflight) if s not in discarded]
    live = [s for s in range(crash + inflight, frames) if s not in discarded]
    merged = list(live)
    for _ in late:  # redeliveries come in order among themselves, anywhere in the flow
        merged.insert(rng.randint(0, len(merged)), -1)
    slots = iter(late)
    merged = [next(slots) if s == -1 else s for s in merged]
    first = merged[0]
    if case["replay"]:
        keyframes = [s for s in range(first) if s % gop == 0 and s not in discarded]
        if keyframes:
            b.begin_replay(until_seq=first)
            for seq in range(keyframes[-1], first):
                if seq not in discarded:
                    record("B", seq, b.on_replay(d(seq, gop=gop)))
            accounting.drops(b.end_replay(complete=True))
    got: list[int] = []
    for seq in merged:
        record("B", seq, b.on_delivery(d(seq, dc=2 if seq in late else 1, gop=gop)))
        got.append(seq)
        if rng.random() < 0.1:
            again = rng.choice(got)
            b.on_delivery(d(again, dc=3, gop=gop))
    accounting.drops(b.close_window())

    report = accounting.report()
    assert report.ok, str(report)
    source = report.sources[0]
    assert source.published == source.processed + sum(source.lost.values())
    assert set(source.lost) <= set(FRAME_LOSS_REASONS)
    if not discarded and case["replay"] and not late:
        # A move with a replay, nothing discarded, nothing in flight: nothing lost
        # (except frames before A's first keyframe, when the GOP does not start at 0).
        assert source.lost == {}, str(report)
