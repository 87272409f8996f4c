from __future__ import annotations

import pytest

from torchstream import BatchPolicy
from torchstream.pipeline import Batcher


def test_full_batch_is_returned_at_once() -> None:
    b: Batcher[int] = Batcher(BatchPolicy(max_size=3, max_wait_seconds=1.0))
    assert b.add(1, now=0.0) is None
    assert b.add(2, now=0.1) is None
    assert b.add(3, now=0.2) == [1, 2, 3]
    assert b.deadline() is None


def test_deadline_counts_from_the_oldest_item() -> None:
    # The clock is an argument: deadline tests take no time at all.
    b: Batcher[int] = Batcher(BatchPolicy(max_size=8, max_wait_seconds=0.010))
    b.add(1, now=100.0)
    b.add(2, now=100.009)
    assert b.deadline() == pytest.approx(100.010)
    assert b.poll(now=100.0099) is None
    assert b.poll(now=100.010) == [1, 2]
    assert b.poll(now=200.0) is None
    stats = b.statistics()
    assert (stats.batches_total, stats.items_total, stats.size_histogram) == (1, 2, {2: 1})


def test_flush_returns_pending() -> None:
    b: Batcher[str] = Batcher(BatchPolicy(max_size=4))
    assert b.flush() is None
    b.add("x", now=0)
    assert b.flush() == ["x"]
    assert len(b) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_size": 0}, "max_size"), ({"max_wait_seconds": -1}, "max_wait_seconds")],
)
def test_policy_is_checked(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BatchPolicy(**kwargs)  # type: ignore[arg-type]
