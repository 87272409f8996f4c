"""A live source: a camera or network stream that reconnects by itself and never ends. The
connection is :class:`~torchstream.sources._live.LiveDemuxer`'s; this decodes its packets."""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from typing import Literal

import torch

from torchstream._errors import SourceError
from torchstream.codecs._nvdec import NvdecDecoder, nvdec_available
from torchstream.codecs._pyav import PyAVPacketDecoder
from torchstream.frame import Frame
from torchstream.pipeline._channel import Policy
from torchstream.pipeline._statistics import LiveStatistics
from torchstream.sources._live import Fatal, LiveDemuxer, LivePacket, LiveStream, redact
from torchstream.sources._video import DecoderChoice

__all__ = ["LivePolicy", "LiveSource"]

log = logging.getLogger(__name__)

LivePolicy = Literal["latest", "every"]
"""``latest``: always work on the newest frame; what cannot be processed in time is dropped
and counted. ``every``: process every frame; a slow pipeline slows the reading down (the
runtime's ``block``), and the stream backs up at the sender."""

_Picture = tuple[torch.Tensor, "torch.cuda.Event | None", "float | None", bool]
"""A decoded picture: RGB surface, its ready event (NVDEC), pts in seconds, keyframe."""


class LiveSource:
    """Frames of one live input: an RTSP/RTSPS/RTMP/HTTP (MJPEG, HLS)/UDP/SRT stream or a
    V4L2 camera (``/dev/video0``), demuxed by FFmpeg (PyAV) and decoded on this source's
    thread by NVDEC when the pipeline runs on CUDA and NVDEC supports the codec, else by
    PyAV on the CPU. Decoding starts at a keyframe, also after every reconnect.

    **Outages.** A connection that cannot be opened within ``open_timeout_seconds`` or
    delivers no packet for ``read_timeout_seconds`` (a dead camera, a hung server, a pulled
    cable) is closed and opened again after a backoff: ``backoff_initial_seconds``, doubled
    at each consecutive failure up to ``backoff_max_seconds``, each wait jittered by ±25 % so
    that cameras behind one switch do not reconnect in lockstep. A stream that ends is
    treated the same way. It goes on forever unless ``max_reconnects`` is set: after that
    many consecutive failed attempts the source fails with :class:`~torchstream.SourceError`
    (its session ends with ``error``). A camera that is down at start-up is retried like any
    outage; only what retrying cannot fix fails at once: an unsupported protocol, a stream
    without video (bad URL forms are refused by the constructor). Refused access is retried
    (a restarting server can answer so) and named in ``errors``.
    While retrying, ``live_statistics().last_error`` names the URL and FFmpeg's reason.

    **Sessions.** Reconnecting does not end the session: ``seq`` goes on, stages keep their
    per-session state, and the first frame after an outage carries
    ``frame.attributes["live.gap_seconds"]``: the time since the last frame before it (stream
    pts restart with the sender and are not comparable across a gap). Every frame carries
    ``frame.attributes["live.wallclock_seconds"]``: the Unix time its packet was received
    (when reading had fallen behind, the time it would have been read had it kept up);
    ``pts_seconds`` is the stream's own clock. The pipeline's per-source lag
    (``statistics().sources[id].lag_seconds_p99``) counts from the same moment. (A
    pipeline's ``session_idle_timeout_seconds`` shorter than an outage does close the
    session; a new one starts when frames come back.)

    **Overload.** ``policy="latest"`` (the default) drops the oldest queued frame when the
    stages fall behind (counted as ``queue_full``), and when decoding itself falls behind
    the stream by more than ``max_lag_seconds`` it skips packets up to the next keyframe
    (counted in ``live_statistics().frames_skipped``), so the output never drifts minutes
    behind the camera. ``policy="every"`` processes every frame: the source blocks and the
    sender's buffers fill (TCP), or packets are lost (UDP).

    **Close.** :meth:`stop` (any thread; the pipeline calls it from ``remove_source`` and
    ``close``) ends ``frames()`` at once while waiting to reconnect, after the next packet
    while streaming, and within the open/read timeouts while FFmpeg is blocked on the
    network. ``close`` (the source's thread) frees the decoder and the connection.

    ``transport`` is RTSP's (``tcp``: reliable and firewall-friendly; ``udp``: lower
    latency, loses packets under load). ``options`` go to FFmpeg as they are
    (``{"video_size": "1280x720", "framerate": "30"}`` for a V4L2 camera).
    """

    def __init__(
        self,
        uri: str,
        *,
        source_id: str | None = None,
        policy: LivePolicy = "latest",
        transport: Literal["tcp", "udp"] = "tcp",
        open_timeout_seconds: float = 10.0,
        read_timeout_seconds: float = 5.0,
        max_reconnects: int | None = None,
        backoff_initial_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        max_lag_seconds: float = 1.0,
        decoder: DecoderChoice = "auto",
        options: dict[str, str] | None = None,
        max_pixels: int = 8192 * 8192,
    ) -> None:
        if policy not in ("latest", "every"):
            raise ValueError(f"policy must be 'latest' or 'every', got {policy!r}")
        if decoder not in ("auto", "nvdec", "pyav"):
            raise ValueError(f"decoder must be 'auto', 'nvdec' or 'pyav', got {decoder!r}")
        if not max_lag_seconds > 0:
            raise ValueError(f"max_lag_seconds must be > 0, got {max_lag_seconds}")
        self._demuxer = LiveDemuxer(
            uri,
            source_id=source_id,
            transport=transport,
            open_timeout_seconds=open_timeout_seconds,
            read_timeout_seconds=read_timeout_seconds,
            max_reconnects=max_reconnects,
            backoff_initial_seconds=backoff_initial_seconds,
            backoff_max_seconds=backoff_max_seconds,
            max_lag_seconds=max_lag_seconds if policy == "latest" else None,
            options=options,
        )
        self.uri = self._demuxer.uri
        self.source_id = self._demuxer.source_id
        self.live_policy: LivePolicy = policy
        self.policy: Policy = "latest" if policy == "latest" else "block"
        self.transport = transport
        self.decoder: DecoderChoice = decoder
        self.decoder_used: Literal["nvdec", "pyav"] | None = None
        self.device = torch.device("cpu")
        self.max_lag_seconds = max_lag_seconds
        self._max_pixels = max_pixels
        self._video: NvdecDecoder | PyAVPacketDecoder | None = None
        self._seq = 0

    @property
    def errors(self) -> collections.deque[str]:
        """The latest outages (the runtime records them on the session when it ends)."""
        return self._demuxer.errors

    # -- the Source protocol ------------------------------------------------------------

    def prepare(self, device: torch.device) -> None:
        """Called by the pipeline before ``open``: the device its stages run on."""
        self.device = device

    def open(self) -> None:
        """Nothing to do: the first connection is made by ``frames()``, so that a camera
        that is down at start-up is retried like any outage."""
        if self.decoder == "nvdec" and not torch.cuda.is_available():
            raise SourceError(self.source_id, "decoder='nvdec' needs a CUDA device")

    def frames(self) -> Iterator[Frame]:
        received: dict[float | None, tuple[float, float]] = {}  # pts seconds -> (monotonic, unix)
        gap: float | None = None  # for the next frame out: the outage before it
        packets = self._demuxer.packets()
        try:
            for item in packets:
                if item.restart:  # a new connection: a new decoder, starting at this keyframe
                    self._start_decoder(item.stream)
                    received.clear()
                if item.gap_seconds is not None:
                    gap = item.gap_seconds
                    log.info("source %s: frames again after %.2f s", self.source_id, gap)
                packet = item.packet
                time_base = float(packet.time_base) if packet.time_base else None
                arrived = (item.received_monotonic, item.received_unix)
                if packet.pts is not None and time_base:
                    received[packet.pts * time_base] = arrived
                    if len(received) > 64:
                        del received[next(iter(received))]
                try:
                    pictures = self._decode(item)
                except Fatal:
                    raise
                except SourceError as exc:
                    # A damaged packet (UDP loss, a camera glitch): end this connection; the
                    # next one starts again at a keyframe.
                    self._demuxer.drop_connection(exc.reason)
                    continue
                for rgb, ready, seconds, key in pictures:
                    at_now, at_unix = received.pop(seconds, arrived)
                    frame = self._frame(rgb, ready, seconds, key, packet.codec, at_now, at_unix)
                    if gap is not None:
                        frame.attributes["live.gap_seconds"] = round(gap, 6)
                        gap = None
                    yield frame
        finally:
            packets.close()
            self._release_decoder()

    def stop(self) -> None:
        """End ``frames()`` soon (see the class docs); safe from any thread, idempotent."""
        self._demuxer.stop()

    def close(self) -> None:
        self._demuxer.close()
        self._release_decoder()

    def live_statistics(self) -> LiveStatistics:
        """The connection's state now (read by the pipeline's ``statistics()``)."""
        return self._demuxer.statistics()

    # -- decoding -----------------------------------------------------------------------

    def _start_decoder(self, stream: LiveStream) -> None:
        self._release_decoder()
        if stream.width * stream.height > self._max_pixels:
            raise Fatal(
                self.source_id,
                f"picture of {stream.width}x{stream.height} exceeds max_pixels={self._max_pixels}",
            )
        time_base = float(stream.time_base) if stream.time_base else None
        use_nvdec = self.decoder == "nvdec" or (
            self.decoder == "auto" and nvdec_available(self.device, stream.codec)
        )
        where = redact(self.uri)
        if use_nvdec:
            device = self.device if self.device.type == "cuda" else torch.device("cuda")
            self._video = NvdecDecoder(
                stream.codec, time_base=time_base, device=device, source_id=self.source_id,
                uri=where, picture=(stream.width, stream.height, stream.pixel_format or ""),
                extradata=stream.extradata,
            )
        else:
            # Default slice threading: frame threading would delay each picture by a frame
            # per thread, which a live stream pays as lag.
            self._video = PyAVPacketDecoder(
                stream.codec, time_base=time_base, source_id=self.source_id, uri=where,
                extradata=stream.extradata, max_pixels=self._max_pixels,
                width=stream.width, height=stream.height, pixel_format=stream.pixel_format,
            )
        self.decoder_used = "nvdec" if use_nvdec else "pyav"

    def _decode(self, item: LivePacket) -> list[_Picture]:
        video, packet = self._video, item.packet
        if isinstance(video, NvdecDecoder):
            decoded: list[_Picture] = []
            with torch.cuda.stream(video.cuda_stream):
                decoded.extend(
                    video.decode(packet.data, pts=packet.pts, keyframe=packet.keyframe)
                )
            return decoded
        if video is None:
            return []
        return [
            (rgb.to(self.device), None, seconds, key)
            for rgb, seconds, key in video.decode(
                packet.data, pts=packet.pts, keyframe=packet.keyframe
            )
        ]

    def _frame(
        self, rgb: torch.Tensor, ready: torch.cuda.Event | None, pts: float | None,
        keyframe: bool, codec: str, received: float, unix: float,
    ) -> Frame:
        frame = Frame(
            source_id=self.source_id,
            seq=self._seq,
            pts_seconds=pts,
            keyframe=keyframe,
            width=int(rgb.shape[1]),
            height=int(rgb.shape[0]),
            codec=codec,
            attributes={"live.wallclock_seconds": round(unix, 6)},
        )
        self._seq += 1
        frame.__dict__["_surface"] = rgb
        frame.__dict__["_t_received"] = received
        if ready is not None:
            frame.__dict__["_ready"] = ready
        return frame

    def _release_decoder(self) -> None:
        video, self._video = self._video, None
        if isinstance(video, NvdecDecoder):
            video.close()

    def __repr__(self) -> str:
        return (
            f"LiveSource({redact(self.uri)!r}, source_id={self.source_id!r}, "
            f"policy={self.live_policy!r})"
        )
