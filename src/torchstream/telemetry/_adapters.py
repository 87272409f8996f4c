"""Prometheus metrics of the source and sink adapters (``torchstream source …`` /
``torchstream sink … --metrics-port``), read from their monitors at scrape time."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from torchstream._errors import MissingDependencyError

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("prometheus-client", "telemetry") from exc

__all__ = ["SinkAdapterCollector", "SourceAdapterCollector"]


def _by_source(
    name: str, doc: str, counts: Mapping[str, int], per_source: bool
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["source"] if per_source else [])
    if per_source:
        for source_id, count in sorted(counts.items()):
            family.add_metric([source_id], count)
    else:
        family.add_metric([], sum(counts.values()))
    return family


def _by_reason(name: str, doc: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["reason"])
    for reason, count in sorted(counts.items()):
        family.add_metric([reason], count)
    return family


class SourceAdapterCollector:
    """What a source adapter sends, from its
    :class:`~torchstream.transport._adapter_stats.SendMonitor`: messages sent, dropped (pub)
    and answered per source, rejected answers by reason, sources sending and failed.
    ``per_source_labels=False`` sums the per-source series."""

    def __init__(self, monitor: Any, *, per_source_labels: bool = True) -> None:
        self._monitor = monitor
        self._per_source = per_source_labels

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._monitor.statistics()
        senders = stats.senders
        yield _by_source(
            "torchstream_adapter_messages_sent_total",
            "Messages sent to the module (frames and ends of stream), by source.",
            {sid: s.sent for sid, s in senders.items()}, self._per_source,
        )
        yield _by_source(
            "torchstream_adapter_messages_dropped_total",
            "Messages a pub endpoint dropped at a subscriber's high-water mark, by source.",
            {sid: s.dropped for sid, s in senders.items()}, self._per_source,
        )
        yield _by_source(
            "torchstream_adapter_answers_received_total",
            "Answers from the module (req receipts, end-of-stream acknowledgements), by source.",
            {sid: s.received for sid, s in senders.items()}, self._per_source,
        )
        rejected: dict[str, int] = {}
        for sender in senders.values():
            for reason, count in sender.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + count
        yield _by_reason(
            "torchstream_adapter_answers_rejected_total",
            "Answers from the module that failed validation, by reason.", rejected,
        )
        yield _by_source(
            "torchstream_adapter_source_failures_total",
            "Sources that stopped on an error (unreadable input, module gone), by source.",
            {sid: stats.failed.get(sid, 0) for sid in senders}, self._per_source,
        )
        yield GaugeMetricFamily(
            "torchstream_adapter_sources_sending", "Sources still sending.",
            value=len(stats.sending),
        )


class SinkAdapterCollector:
    """What a sink adapter receives and writes, from its
    :class:`~torchstream.transport._adapter_stats.ReceiveMonitor`: messages received and
    rejected (by reason), results written per source, re-sent duplicates dropped, writer
    errors, sources ended, acknowledgements sent (results and ends of stream) and failed."""

    def __init__(self, monitor: Any, *, per_source_labels: bool = True) -> None:
        self._monitor = monitor
        self._per_source = per_source_labels

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._monitor.statistics()
        receiver = stats.receiver
        received = CounterMetricFamily(
            "torchstream_adapter_messages_received_total",
            "Valid messages received from the module (results and ends of stream).",
        )
        received.add_metric([], receiver.received if receiver is not None else 0)
        yield received
        yield _by_reason(
            "torchstream_adapter_messages_rejected_total",
            "Messages that failed validation and were skipped, by reason.",
            receiver.rejected if receiver is not None else {},
        )
        yield _by_source(
            "torchstream_adapter_results_written_total",
            "Results handed to the writers, by source (failures also count in "
            "torchstream_adapter_write_errors_total).",
            dict(stats.results), self._per_source,
        )
        for name, doc, value in (
            ("torchstream_adapter_duplicates_dropped_total",
             "Results received again (re-sent by the module) and not written twice.",
             stats.duplicates),
            ("torchstream_adapter_write_errors_total",
             "Times a writer failed on a result, an end of stream or closing.",
             stats.write_errors),
            ("torchstream_adapter_sources_ended_total",
             "Ends of stream received.", stats.sources_ended),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family
        acks = CounterMetricFamily(
            "torchstream_adapter_acks_sent_total",
            "Acknowledgements sent back to the module (router endpoints), by what they "
            "acknowledge.", labels=["kind"],
        )
        acks.add_metric(["result"], stats.acks_sent)
        acks.add_metric(["end_of_stream"], receiver.acks_sent if receiver is not None else 0)
        yield acks
        failed = CounterMetricFamily(
            "torchstream_adapter_acks_failed_total",
            "Acknowledgements that could not go out (the module gone or full).",
        )
        failed.add_metric([], stats.acks_failed + (receiver.acks_failed if receiver else 0))
        yield failed
