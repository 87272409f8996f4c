"""Cross-stream batching: a sans-IO batcher that the stage threads drive with the clock."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BatchPolicy", "Batcher", "BatcherStatistics"]

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPolicy:
    """How a stage groups frames of all sources into batches.

    A batch is formed when ``max_size`` frames are waiting, or when the oldest waiting frame has
    waited ``max_wait_seconds``. ``pad_to_max_size`` asks model stages to pad every batch to
    exactly ``max_size`` rows (fixed shapes for CUDA graphs, and results that do not depend on
    the load). Rule of thumb: ``max_wait_seconds`` well under one frame interval of your
    fastest source (5 ms at 30 frames/s) so batching never adds visible latency.
    """

    max_size: int = 1
    max_wait_seconds: float = 0.005
    pad_to_max_size: bool = False

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError(f"BatchPolicy.max_size must be >= 1, got {self.max_size}")
        if self.max_wait_seconds < 0:
            raise ValueError(
                f"BatchPolicy.max_wait_seconds must be >= 0, got {self.max_wait_seconds}"
            )


@dataclass(frozen=True)
class BatcherStatistics:
    batches_total: int
    items_total: int
    pending: int
    full_batches_total: int
    size_histogram: dict[int, int]
    """Number of batches of each size."""

    @property
    def mean_batch_size(self) -> float:
        return self.items_total / self.batches_total if self.batches_total else 0.0


class Batcher(Generic[T]):
    """Collects items and says when a batch is due. No threads, no clock of its own.

    ``add(item, now)`` returns a batch when the item filled one; ``deadline()`` is the time at
    which the pending items must go even if the batch is not full; ``poll(now)`` returns them
    once that time has come; ``flush()`` returns whatever is pending (end of a session).
    """

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._pending: list[T] = []
        self._first_at: float | None = None
        self._batches = 0
        self._items = 0
        self._full = 0
        self._sizes: collections.Counter[int] = collections.Counter()

    def add(self, item: T, now: float) -> list[T] | None:
        if not self._pending:
            self._first_at = now
        self._pending.append(item)
        if len(self._pending) >= self.policy.max_size:
            self._full += 1
            return self._take()
        return None

    def deadline(self) -> float | None:
        if self._first_at is None:
            return None
        return self._first_at + self.policy.max_wait_seconds

    def poll(self, now: float) -> list[T] | None:
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            return self._take()
        return None

    def flush(self) -> list[T] | None:
        return self._take() if self._pending else None

    def __len__(self) -> int:
        return len(self._pending)

    def _take(self) -> list[T]:
        batch, self._pending, self._first_at = self._pending, [], None
        self._batches += 1
        self._items += len(batch)
        self._sizes[len(batch)] += 1
        return batch

    def statistics(self) -> BatcherStatistics:
        return BatcherStatistics(
            batches_total=self._batches,
            items_total=self._items,
            pending=len(self._pending),
            full_batches_total=self._full,
            size_histogram=dict(self._sizes),
        )
