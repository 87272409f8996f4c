"""Fencing a paused worker: the epoch check on results and the stall watchdog."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchstream.nats._fence import Claim, Fence, FenceStatistics, Stall, StallWatchdog


def test_results_of_an_older_epoch_are_fenced() -> None:
    fence = Fence()
    assert fence.admit(partition=3, epoch=10, worker_id="a")
    assert fence.admit(partition=3, epoch=10, worker_id="a")
    assert fence.admit(partition=3, epoch=11, worker_id="b")  # b took the partition over
    assert not fence.admit(partition=3, epoch=10, worker_id="a")
    assert fence.admit(partition=4, epoch=10, worker_id="a")  # other partitions unaffected
    assert fence.current(3) == Claim(3, 11, "b")
    assert fence.statistics() == FenceStatistics(admitted=4, fenced=1, duplicates=0)


def test_a_rival_claim_with_the_same_epoch_is_fenced() -> None:
    fence = Fence()
    assert fence.admit(partition=0, epoch=5, worker_id="a")
    assert not fence.admit(partition=0, epoch=5, worker_id="b")


def test_a_claim_seen_first_fences_results_before_any_arrive() -> None:
    # A worker watching the claims learns it lost the partition before its next result.
    fence = Fence()
    assert fence.observe_claim(Claim(1, 7, "a"))
    assert fence.observe_claim(Claim(1, 8, "b"))
    assert not fence.observe_claim(Claim(1, 7, "a"))  # older: ignored
    assert fence.current(1) == Claim(1, 8, "b")
    assert not fence.admit(partition=1, epoch=7, worker_id="a")


def test_at_a_sink_a_seq_at_or_below_the_last_admitted_is_a_duplicate() -> None:
    # The stale owner's result raced ahead of the new owner's first one: admitted (its
    # epoch is the newest the sink knows), so the new owner's copy of the seq is dropped.
    fence = Fence()
    assert fence.check(partition=0, epoch=1, worker_id="a", source_id="cam", seq=41) is None
    assert fence.check(partition=0, epoch=2, worker_id="b", source_id="cam", seq=41) == (
        "duplicate"
    )
    assert fence.check(partition=0, epoch=2, worker_id="b", source_id="cam", seq=42) is None
    assert fence.check(partition=0, epoch=1, worker_id="a", source_id="cam", seq=43) == "fenced"
    assert fence.check(partition=0, epoch=2, worker_id="b", source_id="other", seq=0) is None
    assert fence.statistics() == FenceStatistics(admitted=3, fenced=1, duplicates=1)


@settings(deadline=None, max_examples=200)
@given(
    results=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 5), st.sampled_from("abc"), st.integers(0, 30)),
        max_size=60,
    )
)
def test_admitted_results_never_go_back(results: list[tuple[int, int, str, int]]) -> None:
    # Whatever arrives, what a sink admits has, per partition, non-decreasing epochs, one
    # worker per epoch, and per source strictly increasing seqs.
    fence = Fence()
    epochs: dict[int, list[tuple[int, str]]] = {}
    seqs: dict[str, list[int]] = {}
    for partition, epoch, worker, seq in results:
        source = f"cam-{partition}-{seq % 2}"
        if fence.check(
            partition=partition, epoch=epoch, worker_id=worker, source_id=source, seq=seq
        ):
            continue
        epochs.setdefault(partition, []).append((epoch, worker))
        seqs.setdefault(source, []).append(seq)
    for admitted in epochs.values():
        assert [e for e, _ in admitted] == sorted(e for e, _ in admitted)
        assert len({w for e, w in admitted if e == admitted[-1][0]}) == 1
    for got in seqs.values():
        assert got == sorted(set(got))
    stats = fence.statistics()
    assert stats.admitted + stats.fenced + stats.duplicates == len(results)


# StallWatchdog -----------------------------------------------------------------------------


def test_a_loop_that_keeps_going_may_emit() -> None:
    dog = StallWatchdog(stall_threshold_seconds=0.5, now_seconds=100.0)
    for step in range(1, 50):
        assert dog.progress(100.0 + step * 0.1) is None
        assert dog.may_emit(100.0 + step * 0.1 + 0.05)
    assert dog.may_emit(104.9 + 0.5)  # exactly the threshold: still fine
    assert dog.stalled is None and dog.stalls == 0


def test_a_stall_noticed_by_the_emitter_is_latched() -> None:
    dog = StallWatchdog(stall_threshold_seconds=0.5, now_seconds=0.0)
    dog.progress(0.5)
    dog.progress(1.0)
    assert not dog.may_emit(4.0)  # SIGSTOPped from 1.0 to 4.0
    assert dog.stalled == Stall(last_progress_seconds=1.0, detected_seconds=4.0)
    assert dog.stalled is not None and dog.stalled.stalled_seconds == 3.0
    assert dog.progress(4.1) is None  # progress does not clear it
    assert not dog.may_emit(4.1)
    dog.recover(4.2)
    assert dog.may_emit(4.3) and dog.stalls == 1


def test_a_stall_noticed_by_the_heartbeat_first_still_fences_the_emitter() -> None:
    # After SIGCONT the heartbeat thread may run before the emitter: its progress call must
    # not hide the gap.
    dog = StallWatchdog(stall_threshold_seconds=0.5, now_seconds=0.0)
    dog.progress(0.5)
    dog.progress(1.0)
    assert dog.progress(4.0) == Stall(1.0, 4.0)
    assert not dog.may_emit(4.0)


def test_a_clock_that_steps_back_is_no_progress_backwards() -> None:
    dog = StallWatchdog(stall_threshold_seconds=0.5, now_seconds=10.0)
    dog.progress(9.0)  # ignored as a step back: the last progress stays at 10.0
    assert not dog.may_emit(10.6)


@pytest.mark.parametrize("threshold", [0.0, -1.0, math.inf, math.nan])
def test_the_threshold_is_checked(threshold: float) -> None:
    with pytest.raises(ValueError, match="stall_threshold_seconds must be a finite number > 0"):
        StallWatchdog(stall_threshold_seconds=threshold, now_seconds=0.0)


def test_a_paused_worker_emits_nothing_stale() -> None:
    """The prototype's SIGSTOP pitfall, end to end on the sans-IO parts: worker A (epoch 10
    on partition 2) holds results for seqs 40..44 and is paused 3 s; B claims the partition
    with epoch 11 and emits 45..; A resumes. A's watchdog stops it emitting what it held,
    and the result A published after passing its check just before the pause is fenced at
    the sink."""
    sink = Fence()
    dog_a = StallWatchdog(stall_threshold_seconds=0.5, now_seconds=0.0)
    emitted: list[tuple[str, int]] = []
    dropped_by_a: list[int] = []

    def sink_receives(worker: str, epoch: int, seq: int) -> None:
        if sink.check(partition=2, epoch=epoch, worker_id=worker, source_id="cam", seq=seq):
            return
        emitted.append((worker, seq))

    for seq in range(35, 40):
        dog_a.progress(seq * 0.01)
        assert dog_a.may_emit(seq * 0.01)
        sink_receives("a", 10, seq)
    raced = 40  # passed may_emit at 0.4, then SIGSTOP before the publish
    assert dog_a.may_emit(0.4)
    # Paused from 0.4 to 3.4. Meanwhile B takes over and emits.
    for seq in range(45, 50):
        sink_receives("b", 11, seq)
    # A resumes: the raced publish goes out first, then its loop looks at the watchdog.
    sink_receives("a", 10, raced)
    for seq in range(41, 45):
        if dog_a.may_emit(3.4):
            sink_receives("a", 10, seq)
        else:
            dropped_by_a.append(seq)
    assert emitted == [("a", s) for s in range(35, 40)] + [("b", s) for s in range(45, 50)]
    assert dropped_by_a == [41, 42, 43, 44]
    assert sink.statistics().fenced == 1
