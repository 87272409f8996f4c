"""The outside check of the invariants: published = processed + counted drops, per seq."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from torchstream.nats._accounting import Accounting, ResultRecord
from torchstream.nats._ledger import DropRecord


def result(seq: int, source: str = "cam", worker: str = "w1", epoch: int = 1) -> ResultRecord:
    return ResultRecord(source, seq, worker, epoch)


def test_everything_processed_is_ok() -> None:
    accounting = Accounting()
    accounting.published("cam", range(5))
    for seq in range(5):
        accounting.result(result(seq))
    report = accounting.report()
    assert report.ok and report.violations() == ()
    assert str(report) == "accounting OK\ncam: published 5, processed 5, lost 0 (none)"


def test_counted_losses_are_ok_and_reported_by_reason() -> None:
    accounting = Accounting()
    accounting.published("cam", range(10))
    for seq in (0, 1, 5, 9):
        accounting.result(result(seq))
    accounting.drops(
        [
            DropRecord("cam", 2, 4, "gap"),
            DropRecord("cam", 6, 6, "failover_inflight"),
            DropRecord("cam", 7, 8, "broker_discard"),
            DropRecord("cam", 6, 6, "duplicate"),  # a repeat: neither loss nor redundancy
        ]
    )
    source = accounting.report().sources[0]
    assert source.ok
    assert dict(source.lost) == {"gap": 3, "failover_inflight": 1, "broker_discard": 2}
    assert source.redundant_drops == 0


def test_a_silent_loss_is_a_violation() -> None:
    accounting = Accounting()
    accounting.published("cam", range(4))
    accounting.result(result(0))
    accounting.result(result(3))
    report = accounting.report()
    assert not report.ok
    assert report.violations() == (
        "cam: 2 published but neither processed nor counted as dropped: [1, 2]",
    )
    assert "accounting FAILED (1)" in str(report) and "VIOLATION" in str(report)


def test_duplicates_and_out_of_order_results_are_violations() -> None:
    accounting = Accounting()
    accounting.published("cam", range(4))
    for seq, worker in ((0, "a"), (2, "a"), (1, "b"), (2, "b"), (3, "b")):
        accounting.result(result(seq, worker=worker))
    source = accounting.report().sources[0]
    assert source.duplicates == (2,)
    assert source.out_of_order == ((2, 1),)
    assert source.unaccounted == ()


def test_results_and_drops_for_unpublished_seqs_are_violations() -> None:
    accounting = Accounting()
    accounting.published("cam", [0, 1])
    accounting.published("cam", [2], acknowledged=False)  # the ack timed out: maybe stored
    accounting.result(result(0))
    accounting.result(result(1))
    accounting.result(result(2))
    accounting.drop(DropRecord("cam", 3, 4, "gap"))
    source = accounting.report().sources[0]
    assert source.unpublished == (3, 4)
    assert (source.published, source.processed) == (2, 2)


def test_a_frame_counted_twice_is_shown_not_failed() -> None:
    # The dead owner's result made it out, then its redelivery was dropped by the new owner.
    accounting = Accounting()
    accounting.published("cam", range(3))
    for seq in range(3):
        accounting.result(result(seq))
    accounting.drop(DropRecord("cam", 1, 1, "failover_inflight"))
    source = accounting.report().sources[0]
    assert source.ok and source.redundant_drops == 1 and source.lost == {}
    assert "1 redundant drop records" in str(source)


def test_long_lists_are_shortened() -> None:
    accounting = Accounting()
    accounting.published("cam", range(25))
    (line,) = accounting.report().violations()
    assert line.endswith("[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...]")


def test_sources_are_separate_and_sorted() -> None:
    accounting = Accounting()
    accounting.published("b", [0])
    accounting.published("a", [0])
    accounting.result(result(0, source="a"))
    report = accounting.report()
    assert [s.source_id for s in report.sources] == ["a", "b"]
    assert [s.ok for s in report.sources] == [True, False]


@settings(deadline=None, max_examples=200)
@given(fates=st.lists(st.sampled_from(["result", "gap", "fenced", "none", "both"]), max_size=60))
def test_the_equation_always_balances(fates: list[str]) -> None:
    accounting = Accounting()
    accounting.published("cam", range(len(fates)))
    for seq, fate in enumerate(fates):
        if fate in ("result", "both"):
            accounting.result(result(seq))
        if fate in ("gap", "fenced", "both"):
            accounting.drop(DropRecord("cam", seq, seq, "gap" if fate == "both" else fate))
    source = accounting.report().sources[0]
    assert source.published == source.processed + sum(source.lost.values()) + len(
        source.unaccounted
    )
    assert source.unaccounted == tuple(i for i, f in enumerate(fates) if f == "none")
    assert source.redundant_drops == fates.count("both")
