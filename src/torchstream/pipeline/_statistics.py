"""Frozen snapshots of what the runtime has done: pulled by callers, never pushed."""

from __future__ import annotations

from dataclasses import dataclass

from torchstream.pipeline._batcher import BatcherStatistics
from torchstream.pipeline._channel import ChannelStatistics

__all__ = [
    "BATCH_SECONDS_BUCKETS",
    "LiveStatistics",
    "PipelineHealth",
    "PipelineStatistics",
    "SinkStatistics",
    "SourceStatistics",
    "StageStatistics",
]


BATCH_SECONDS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
"""Upper bounds (seconds) of the stage batch-time histogram; a last bucket holds the rest."""


@dataclass(frozen=True)
class LiveStatistics:
    """The connection of a live source (camera, RTSP/RTMP/HTTP stream): see
    :class:`~torchstream.sources.LiveSource`."""

    uri: str
    """The input, with any password in it replaced by ``***``."""
    connected: bool
    """Packets are arriving now (False while connecting, after an outage, between retries)."""
    reconnects: int
    """Outages recovered from: frames flowed again after the input was lost."""
    failed_attempts: int
    """Connection attempts that failed (unreachable, refused, timed out), in total."""
    frames_skipped: int
    """Packets not decoded to catch up with a stream the source could not keep up with
    (``latest`` policy: decoding resumes at the next keyframe)."""
    last_gap_seconds: float | None
    """Time between the last frame before the latest outage and the first one after it."""
    last_error: str | None
    """Why the input was last lost or could not be reached (names the URL)."""


@dataclass(frozen=True)
class SourceStatistics:
    source_id: str
    frames_in: int
    frames_out: int
    dropped: dict[str, int]
    """Frames dropped, by reason (``queue_full``, ``stage_error``, ``deadline``)."""
    sessions: int
    errors: tuple[str, ...]
    running: bool
    decoder: str | None
    """``nvdec`` or ``pyav`` once a video source is open; None for other sources."""
    first_frame_seconds: float | None
    """Monotonic time of the first frame in; with ``last_frame_seconds`` gives the fps."""
    last_frame_seconds: float | None
    lag_seconds_p50: float | None = None
    lag_seconds_p99: float | None = None
    """How long frames took from being received (live sources: their packet read from the
    network; others: entering the pipeline) to being handed to the sinks, over the last 256
    frames of this source."""
    live: LiveStatistics | None = None
    """The connection of a live source; None for files, images and pushed sources."""

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def frames_per_second(self) -> float:
        if self.first_frame_seconds is None or self.last_frame_seconds is None:
            return 0.0
        elapsed = self.last_frame_seconds - self.first_frame_seconds
        return (self.frames_out - 1) / elapsed if elapsed > 0 and self.frames_out > 1 else 0.0


@dataclass(frozen=True)
class StageStatistics:
    name: str
    frames_total: int
    batches_total: int
    errors_total: int
    busy_seconds: float
    """Time spent inside the stage's ``process``."""
    batch_seconds_counts: tuple[int, ...]
    """Batches per bucket of :data:`BATCH_SECONDS_BUCKETS` (plus one for longer ones)."""
    oom_splits_total: int
    """Batches split in halves and retried after running out of memory."""
    batcher: BatcherStatistics
    input: ChannelStatistics

    @property
    def mean_batch_seconds(self) -> float:
        return self.busy_seconds / self.batches_total if self.batches_total else 0.0


@dataclass(frozen=True)
class SinkStatistics:
    name: str
    frames_total: int
    errors_total: int
    dropped_total: int
    """Frames of ``latest`` (live) sources this sink skipped because it fell behind; they
    were results (counted in ``frames_out``), only this sink did not get them."""
    input: ChannelStatistics


@dataclass(frozen=True)
class PipelineStatistics:
    """Totals of a pipeline. The invariant ``frames_in == frames_out + dropped_total +
    frames_in_flight`` always holds; once the pipeline is drained, nothing is in flight."""

    frames_in: int
    frames_out: int
    dropped: dict[str, int]
    sources: dict[str, SourceStatistics]
    stages: tuple[StageStatistics, ...]
    sinks: tuple[SinkStatistics, ...]
    sessions_open: int
    latency_seconds_p50: float
    latency_seconds_p95: float
    """Frame entered the pipeline → handed to the sinks, over the last 1024 frames."""

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def frames_in_flight(self) -> int:
        return self.frames_in - self.frames_out - self.dropped_total


@dataclass(frozen=True)
class PipelineHealth:
    """Liveness and readiness, for orchestrators.

    ``alive``: no runtime thread crashed and the pipeline is not closed. ``ready``: alive,
    every stage set up (models loaded) and at least one source bound.
    """

    alive: bool
    ready: bool
    reason: str
