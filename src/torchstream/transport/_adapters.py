"""Adapters: processes at the edges of a module. Source adapters read files, streams and image
folders and send them (demuxed, not decoded); sink adapters receive results and write them."""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol

from torchstream._errors import BrokenResourceError, OverloadedError, SourceError
from torchstream.codecs._encode import VideoEncoder
from torchstream.codecs._pyav import decode_image, demux_packets
from torchstream.sinks._jsonl import JsonLinesSink
from torchstream.sinks._video import safe_filename_part
from torchstream.sources._live import LiveDemuxer, is_live
from torchstream.transport._adapter_stats import AdapterTracer, ReceiveMonitor, SendMonitor
from torchstream.transport._channel import Receiver, Sender
from torchstream.transport._endpoint import Endpoint
from torchstream.transport._protocol import (
    EndOfStream,
    FrameMessage,
    ImagePayload,
    PacketPayload,
    ResultAck,
    ResultMessage,
)
from torchstream.transport._remux import PacketRemuxer

__all__ = [
    "ImageResultWriter",
    "JsonResultWriter",
    "ResultWriter",
    "SendReport",
    "VideoResultWriter",
    "receive_results",
    "send_images",
    "send_video",
]

log = logging.getLogger(__name__)

_DEDUPE_MEMORY = 65536
"""Results remembered by (source id, seq) to drop re-sent copies."""

_IMAGE_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}


@dataclass(frozen=True)
class SendReport:
    source_id: str
    frames: int
    """Messages sent (video packets or images)."""
    acknowledged: bool
    """Whether the module acknowledged the end of stream (dealer endpoints)."""
    reconnects: int = 0
    """Outages a live input came back from."""


def send_video(
    uri: str,
    endpoint: Endpoint | str | Outlet,
    *,
    source_id: str,
    sync: bool = False,
    loop: bool = False,
    stop: threading.Event | None = None,
    options: dict[str, str] | None = None,
    transport: Literal["tcp", "udp"] = "tcp",
    open_timeout_seconds: float = 10.0,
    read_timeout_seconds: float = 5.0,
    max_reconnects: int | None = None,
    max_lag_seconds: float | None = 1.0,
    monitor: SendMonitor | None = None,
    tracer: AdapterTracer | None = None,
    raw_pictures: Literal["raw", "jpeg"] = "raw",
) -> SendReport:
    """Send the video packets of ``uri`` (a file or stream URL, demuxed by PyAV, never
    decoded here) as ``source_id``, then an end of stream.

    ``sync`` paces packets at the stream's own rate (a file behaves like a camera);
    ``loop`` starts over at the end, with timestamps that keep increasing, until ``stop``.
    ``monitor`` follows the sender's counts (for a metrics endpoint); ``tracer`` wraps each
    send in a span whose ``traceparent`` the frame message carries, so the module continues
    the trace.

    A live input (:func:`~torchstream.sources.is_live`: RTSP, RTMP, UDP, SRT, HLS, a
    camera) is read by a :class:`~torchstream.sources._live.LiveDemuxer` instead and sent by
    :func:`~torchstream.transport._live_adapter.send_live`: outages do not end the stream,
    only ``stop`` does (or ``max_reconnects`` consecutive failed attempts, which raise
    :class:`SourceError` after the end of stream). ``transport`` (RTSP's), the open and read
    timeouts and ``max_lag_seconds`` (how far behind the stream sending may fall before it
    skips to the next keyframe; None: never skip) and ``raw_pictures`` (how a stream of raw
    pictures is sent, see :func:`~torchstream.transport._live_adapter.send_live`) apply to
    live inputs only, ``sync`` and ``loop`` to files only.
    """
    stop = stop or threading.Event()
    if is_live(uri):
        from torchstream.transport._live_adapter import send_live

        demuxer = LiveDemuxer(
            uri, source_id=source_id, transport=transport,
            open_timeout_seconds=open_timeout_seconds, read_timeout_seconds=read_timeout_seconds,
            max_reconnects=max_reconnects, max_lag_seconds=max_lag_seconds, options=options,
            stop_event=stop,
        )
        return send_live(demuxer, endpoint, stop=stop, monitor=monitor, tracer=tracer,
                         raw_pictures=raw_pictures)
    sent = 0
    offset = 0  # pts added to each loop, so the stream's clock never goes back
    with open_sender(endpoint) as sender, _monitored(monitor, source_id, sender):
        started = time.monotonic()
        while not stop.is_set():
            stamps: list[int] = []
            for packet in demux_packets(uri, source_id=source_id, options=options):
                if stop.is_set():
                    break
                time_base = packet.time_base or Fraction(1, 90000)
                pts = None if packet.pts is None else packet.pts + offset
                dts = None if packet.dts is None else packet.dts + offset
                if packet.pts is not None:
                    stamps.append(packet.pts)
                if sync and pts is not None:
                    delay = started + float(pts * time_base) - time.monotonic()
                    if delay > 0:
                        stop.wait(delay)
                with _sending(tracer, source_id, sent) as traceparent:
                    sender.send(
                        FrameMessage(
                            source_id=source_id,
                            seq=sent,
                            keyframe=packet.keyframe,
                            payload=PacketPayload(
                                codec=packet.codec,
                                width=packet.width,
                                height=packet.height,
                                time_base=(time_base.numerator, time_base.denominator),
                                pts=pts,
                                dts=dts,  # a sink re-muxing the packets needs it (B-frames)
                                duration=packet.duration,
                            ),
                            traceparent=traceparent,
                        ),
                        packet.data,
                    )
                sent += 1
            if not loop or not stamps:
                break
            # The next loop starts one frame duration after this one's last picture.
            span = max(stamps) - min(stamps)
            offset += max(stamps) + max(1, round(span / max(1, len(stamps) - 1)))
        ack = sender.send_eos(source_id, last_seq=sent - 1 if sent else None)
    return SendReport(source_id, sent, ack is not None)


def send_images(
    paths: Iterable[Path],
    endpoint: Endpoint | str | Outlet,
    *,
    source_id: str,
    stop: threading.Event | None = None,
    monitor: SendMonitor | None = None,
    tracer: AdapterTracer | None = None,
) -> SendReport:
    """Send JPEG and PNG files as the frames of ``source_id`` (the bytes as they are), then
    an end of stream. A file of another type, or one that cannot be read, raises
    :class:`SourceError` naming it before anything of it is sent. ``monitor`` and
    ``tracer``: as for :func:`send_video`."""
    stop = stop or threading.Event()
    sent = 0
    with open_sender(endpoint) as sender, _monitored(monitor, source_id, sender):
        for path in paths:
            if stop.is_set():
                break
            image_format = _IMAGE_FORMATS.get(path.suffix.lower())
            if image_format is None:
                raise SourceError(source_id, f"{path}: only JPEG and PNG images can be sent")
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise SourceError(source_id, f"cannot read {path}: {exc}") from exc
            with _sending(tracer, source_id, sent) as traceparent:
                sender.send(
                    FrameMessage(
                        source_id=source_id,
                        seq=sent,
                        payload=ImagePayload(format=image_format),  # type: ignore[arg-type]
                        traceparent=traceparent,
                    ),
                    data,
                )
            sent += 1
        ack = sender.send_eos(source_id, last_seq=sent - 1 if sent else None)
    return SendReport(source_id, sent, ack is not None)


class Outlet(Protocol):
    """Somewhere other than a ZeroMQ endpoint that source adapters can send to (a NATS
    publisher: :class:`torchstream.nats._outlet.NatsOutlet`): it opens, for each source, a
    sender with ``Sender``'s ``send``, ``send_eos`` and ``statistics``."""

    def open_sender(self) -> Any: ...


def open_sender(endpoint: Endpoint | str | Outlet) -> Any:
    """A sender for ``endpoint``: a ZeroMQ :class:`Sender`, or the outlet's own."""
    if isinstance(endpoint, (Endpoint, str)):
        return Sender(endpoint)
    return endpoint.open_sender()


@contextlib.contextmanager
def _monitored(monitor: SendMonitor | None, source_id: str, sender: Any) -> Iterator[None]:
    if monitor is None:
        yield
        return
    monitor.started(source_id, sender)
    failed = True
    try:
        yield
        failed = False
    finally:
        monitor.finished(source_id, sender, failed=failed)


def _sending(
    tracer: AdapterTracer | None, source_id: str, seq: int
) -> AbstractContextManager[str | None]:
    return nullcontext(None) if tracer is None else tracer.sending(source_id, seq)


class ResultWriter:
    """What a sink adapter does with each result; subclasses write files."""

    def write(self, result: ResultMessage, content: memoryview | None) -> None:
        raise NotImplementedError

    def end(self, source_id: str) -> None:
        """The source ended: finish its files."""

    def close(self) -> None:
        """Finish everything."""


class JsonResultWriter(ResultWriter):
    """Every result's frame metadata as one JSON line (the schema of ``--meta``)."""

    def __init__(self, path: str | Path) -> None:
        self._sink = JsonLinesSink(path)

    def write(self, result: ResultMessage, content: memoryview | None) -> None:
        self._sink.write(result.frame)

    def close(self) -> None:
        self._sink.close()


class ImageResultWriter(ResultWriter):
    """Each result's image content (``original`` JPEG/PNG or an annotated ``image``) as
    ``<directory>/<source_id>/<seq:06d>.<jpg|png>``; results without image content are
    counted in ``skipped``."""

    def __init__(self, directory: str | Path) -> None:
        self._directory = Path(directory)
        self.skipped = 0
        self.written = 0

    def write(self, result: ResultMessage, content: memoryview | None) -> None:
        payload = result.payload
        if content is None or not isinstance(payload, ImagePayload):
            self.skipped += 1
            return
        suffix = "jpg" if payload.format == "jpeg" else "png"
        folder = self._directory / safe_filename_part(result.source_id)
        path = folder / f"{result.seq:06d}.{suffix}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.partial")
            temporary.write_bytes(content)
            temporary.replace(path)
        except OSError as exc:
            raise BrokenResourceError(f"{path}: cannot write image: {exc}") from exc
        self.written += 1


class VideoResultWriter(ResultWriter):
    """Each source's results as a video file, ``pattern`` with ``{source_id}`` replaced
    (``out/{source_id}.mp4``).

    Results with ``original`` video packets (``module --content original`` fed by video
    sources) are re-muxed as they were encoded: no decoding, no re-encoding, the source's
    own quality (see :class:`~torchstream.transport._remux.PacketRemuxer`: restored decode
    order, starting at a keyframe). Annotated results (``--content image``) are encoded as
    H.264 with ``crf`` and ``preset``. Results with neither are counted in ``skipped``, as
    are results of the other kind than a source's first.
    """

    def __init__(
        self, pattern: str, *, crf: int = 23, preset: str = "veryfast", reorder_window: int = 32
    ) -> None:
        if "{source_id}" not in pattern:
            raise ValueError(f"the video pattern needs {{source_id}}, got {pattern!r}")
        if reorder_window < 1:
            raise ValueError(f"reorder_window must be >= 1, got {reorder_window}")
        self._pattern = pattern
        self._crf = crf
        self._preset = preset
        self._reorder_window = reorder_window
        self._encoders: dict[str, VideoEncoder] = {}
        self._remuxers: dict[str, PacketRemuxer] = {}
        self.skipped = 0
        self.paths: list[Path] = []

    def _path(self, source_id: str) -> Path:
        path = Path(self._pattern.format(source_id=safe_filename_part(source_id)))
        self.paths.append(path)
        return path

    def write(self, result: ResultMessage, content: memoryview | None) -> None:
        source_id, payload = result.source_id, result.payload
        if content is None or (
            (source_id in self._encoders and not isinstance(payload, ImagePayload))
            or (source_id in self._remuxers and not isinstance(payload, PacketPayload))
        ):
            self.skipped += 1
            return
        if isinstance(payload, PacketPayload):
            remuxer = self._remuxers.get(source_id)
            if remuxer is None:
                remuxer = self._remuxers[source_id] = PacketRemuxer(
                    self._path(source_id), reorder_window=self._reorder_window
                )
            before = remuxer.skipped
            remuxer.write(result.seq, payload, content, keyframe=result.frame.keyframe)
            self.skipped += remuxer.skipped - before
            return
        if not isinstance(payload, ImagePayload):
            self.skipped += 1
            return
        encoder = self._encoders.get(source_id)
        if encoder is None:
            path = self._path(source_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            encoder = self._encoders[source_id] = VideoEncoder(
                path, crf=self._crf, preset=self._preset
            )
        rgb, _ = decode_image(content, source_id=source_id)
        encoder.encode(rgb, pts_seconds=result.frame.pts_seconds)

    def end(self, source_id: str) -> None:
        encoder = self._encoders.pop(source_id, None)
        if encoder is not None:
            encoder.close()
        remuxer = self._remuxers.pop(source_id, None)
        if remuxer is not None:
            before = remuxer.skipped
            remuxer.close()
            self.skipped += remuxer.skipped - before

    def close(self) -> None:
        for source_id in [*self._encoders, *self._remuxers]:
            self.end(source_id)


@dataclass(frozen=True)
class ReceiveReport:
    results: int
    sources_ended: int
    errors: int


def receive_results(
    endpoint: Endpoint | str,
    writers: Sequence[ResultWriter],
    *,
    source_ids: Sequence[str] | None = None,
    exit_after_sources: int | None = None,
    idle_timeout_seconds: float | None = None,
    stop: threading.Event | None = None,
    monitor: ReceiveMonitor | None = None,
    tracer: AdapterTracer | None = None,
) -> ReceiveReport:
    """Receive results on ``endpoint`` (sub or pull) and hand them to ``writers`` until
    ``stop``, until ``exit_after_sources`` sources have ended, or until nothing came for
    ``idle_timeout_seconds``. ``source_ids``: prefixes to subscribe to (sub only). A writer
    that fails on one result is logged and counted; the others go on.

    On a router endpoint (the module's ``--out dealer+connect:…``) every result is
    acknowledged once the writers had it, so a module re-sends only what a killed receiver
    never handled; a result seen again (re-sent) is acknowledged and not written twice.

    ``monitor`` counts what happens (for a metrics endpoint); ``tracer`` wraps the writers'
    work on each result in a span continuing the result's ``traceparent``."""
    stop = stop or threading.Event()
    counts = monitor or ReceiveMonitor()
    subscribe = list(source_ids) if source_ids else None
    last = time.monotonic()
    seen: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
    with Receiver(endpoint, subscribe=subscribe) as inbox:
        counts.opened(inbox)
        acknowledging = inbox.endpoint.socket_type == "router"
        try:
            while not stop.is_set():
                if exit_after_sources is not None and counts.sources_ended >= exit_after_sources:
                    break
                try:
                    message, content = inbox.recv(0.2)
                except TimeoutError:
                    if idle_timeout_seconds is not None and (
                        time.monotonic() - last > idle_timeout_seconds
                    ):
                        break
                    continue
                last = time.monotonic()
                if isinstance(message, ResultMessage):
                    if acknowledging:
                        key = (message.source_id, message.seq)
                        if key in seen:  # re-sent: already written
                            counts.duplicates += 1
                            _acknowledge(inbox, message, counts)
                            continue
                        seen[key] = None
                        if len(seen) > _DEDUPE_MEMORY:
                            seen.popitem(last=False)
                    with _writing(tracer, message):
                        _hand_over(writers, message, content, counts)
                    counts.result(message.source_id)
                    if acknowledging:
                        _acknowledge(inbox, message, counts)
                elif isinstance(message, EndOfStream):
                    _hand_over(writers, message, None, counts)
                    counts.sources_ended += 1
        finally:
            for writer in writers:
                try:
                    writer.close()
                except Exception as exc:
                    counts.write_errors += 1
                    log.warning("sink adapter: %r failed to close: %s", writer, exc)
    stats = counts.statistics()
    return ReceiveReport(sum(stats.results.values()), stats.sources_ended, stats.write_errors)


def _hand_over(
    writers: Sequence[ResultWriter],
    message: ResultMessage | EndOfStream,
    content: memoryview | None,
    counts: ReceiveMonitor,
) -> None:
    for writer in writers:
        try:
            if isinstance(message, ResultMessage):
                writer.write(message, content)
            else:
                writer.end(message.source_id)
        except Exception as exc:
            counts.write_errors += 1
            log.warning("sink adapter: %r failed on %r: %s", writer, message, exc)


def _writing(tracer: AdapterTracer | None, result: ResultMessage) -> AbstractContextManager[None]:
    return nullcontext() if tracer is None else tracer.writing(result)


def _acknowledge(inbox: Receiver, result: ResultMessage, counts: ReceiveMonitor) -> None:
    try:
        inbox.reply(ResultAck(source_id=result.source_id, seq=result.seq))
    except (BrokenResourceError, OverloadedError) as exc:  # the module went away or is full
        counts.acks_failed += 1
        log.warning("sink adapter: cannot acknowledge %s #%d: %s", result.source_id,
                    result.seq, exc)
    else:
        counts.acks_sent += 1
