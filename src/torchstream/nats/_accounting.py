"""Checking the scale-out invariants from the outside, per camera: every published frame is
processed once or counted as dropped, processed seqs strictly increase, no (source, seq)
twice. For tests, the fault suite and benchmarks; pure Python, no I/O.

Feed an :class:`Accounting` what the sources published, the results the sinks accepted (in
the order they arrived) and the drop records the workers counted, then read its
:meth:`~Accounting.report`. It works per seq, not on totals, so a frame counted twice (a
dead worker's result that made it out *and* its redelivery dropped by the new owner) is
neither a loss nor a violation: it is shown as a redundant drop record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torchstream.nats._ledger import REPEAT_REASONS, DropRecord

__all__ = ["Accounting", "AccountingReport", "ResultRecord", "SourceReport"]

_SHOWN = 10  # seqs listed per problem in a report line


@dataclass(frozen=True)
class ResultRecord:
    """A result as a sink received it: which frame, from which worker and claim epoch."""

    source_id: str
    seq: int
    worker_id: str
    epoch: int


@dataclass(frozen=True)
class SourceReport:
    """The accounting of one camera. Violations are the fields from ``unaccounted`` on."""

    source_id: str
    published: int
    """Seqs the source published and the broker acknowledged."""
    processed: int
    """Distinct published seqs with a result."""
    lost: Mapping[str, int]
    """Distinct published seqs without a result, by the reason first recorded for each.
    ``published == processed + sum(lost) + len(unaccounted)`` always holds."""
    redundant_drops: int
    """Drop records for seqs that have a result, or a second record for a lost seq:
    a frame counted twice across workers (harmless, shown for the curious)."""
    unaccounted: tuple[int, ...]
    """Published seqs with neither a result nor a drop record: lost silently."""
    duplicates: tuple[int, ...]
    """Seqs with more than one result."""
    out_of_order: tuple[tuple[int, int], ...]
    """(previous highest seq, seq) for each result that arrived below an earlier one."""
    unpublished: tuple[int, ...]
    """Seqs with a result or a loss record that were never published."""

    @property
    def ok(self) -> bool:
        return not (self.unaccounted or self.duplicates or self.out_of_order or self.unpublished)

    def violations(self) -> tuple[str, ...]:
        """One readable line per kind of violation."""
        lines = []
        for name, values in (
            ("published but neither processed nor counted as dropped", self.unaccounted),
            ("processed more than once", self.duplicates),
            ("results out of order (previous highest, seq)", self.out_of_order),
            ("processed or dropped but never published", self.unpublished),
        ):
            if values:
                lines.append(f"{self.source_id}: {len(values)} {name}: {_show(values)}")
        return tuple(lines)

    def __str__(self) -> str:
        lost = ", ".join(f"{r} {n}" for r, n in sorted(self.lost.items())) or "none"
        line = (
            f"{self.source_id}: published {self.published}, processed {self.processed}, "
            f"lost {sum(self.lost.values())} ({lost})"
        )
        if self.redundant_drops:
            line += f", {self.redundant_drops} redundant drop records"
        return "\n".join((line, *("  VIOLATION " + v for v in self.violations())))


@dataclass(frozen=True)
class AccountingReport:
    """The accounting of every camera; ``str()`` of it reads as a short report."""

    sources: tuple[SourceReport, ...]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sources)

    def violations(self) -> tuple[str, ...]:
        return tuple(v for s in self.sources for v in s.violations())

    def __str__(self) -> str:
        head = "accounting OK" if self.ok else f"accounting FAILED ({len(self.violations())})"
        return "\n".join((head, *(str(s) for s in self.sources)))


class Accounting:
    """Collects published seqs, results and drop records; :meth:`report` checks them."""

    def __init__(self) -> None:
        self._published: dict[str, set[int]] = {}
        self._maybe: dict[str, set[int]] = {}
        self._results: dict[str, list[int]] = {}
        self._drops: dict[str, list[DropRecord]] = {}

    def published(self, source_id: str, seqs: Iterable[int], *, acknowledged: bool = True) -> None:
        """Record seqs the source published. ``acknowledged=False`` for publishes whose
        outcome is unknown (the acknowledgement timed out, the server died): such a seq may
        be processed or dropped, or not appear at all, without a violation."""
        target = self._published if acknowledged else self._maybe
        target.setdefault(source_id, set()).update(seqs)

    def result(self, record: ResultRecord) -> None:
        """Record a result accepted by a sink, in arrival order."""
        self._results.setdefault(record.source_id, []).append(record.seq)

    def drop(self, record: DropRecord) -> None:
        """Record a drop counted by a worker (a ledger's or a fence's record)."""
        self._drops.setdefault(record.source_id, []).append(record)

    def drops(self, records: Iterable[DropRecord]) -> None:
        for record in records:
            self.drop(record)

    def report(self) -> AccountingReport:
        names = set(self._published) | set(self._maybe) | set(self._results) | set(self._drops)
        return AccountingReport(tuple(self._source_report(s) for s in sorted(names)))

    def _source_report(self, source_id: str) -> SourceReport:
        published = self._published.get(source_id, set())
        known = published | self._maybe.get(source_id, set())
        seen: set[int] = set()
        duplicates: list[int] = []
        out_of_order: list[tuple[int, int]] = []
        highest: int | None = None
        for seq in self._results.get(source_id, []):
            if seq in seen:
                duplicates.append(seq)
                continue
            seen.add(seq)
            if highest is not None and seq < highest:
                out_of_order.append((highest, seq))
            highest = seq if highest is None else max(highest, seq)
        lost_reason: dict[int, str] = {}
        redundant = 0
        for record in self._drops.get(source_id, []):
            if record.reason in REPEAT_REASONS:
                continue
            for seq in record.seqs():
                if seq in seen or seq in lost_reason:
                    redundant += 1
                else:
                    lost_reason[seq] = record.reason
        lost: dict[str, int] = {}
        for seq, reason in lost_reason.items():
            if seq in published:
                lost[reason] = lost.get(reason, 0) + 1
        return SourceReport(
            source_id=source_id,
            published=len(published),
            processed=len(seen & published),
            lost=lost,
            redundant_drops=redundant,
            unaccounted=tuple(sorted(published - seen - lost_reason.keys())),
            duplicates=tuple(duplicates),
            out_of_order=tuple(out_of_order),
            unpublished=tuple(sorted((seen | lost_reason.keys()) - known)),
        )


def _show(values: tuple[object, ...]) -> str:
    shown = ", ".join(str(v) for v in values[:_SHOWN])
    return f"[{shown}{', ...' if len(values) > _SHOWN else ''}]"
