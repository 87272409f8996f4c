"""A live source: a camera or network stream that reconnects by itself and never ends."""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import re
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any, Literal

import av
import torch

from torchstream._errors import SourceError
from torchstream.codecs._nvdec import NvdecDecoder, nvdec_available
from torchstream.codecs._pyav import annexb_filter
from torchstream.frame import Frame
from torchstream.pipeline._channel import Policy
from torchstream.pipeline._statistics import LiveStatistics
from torchstream.sources._backlog import Backlog
from torchstream.sources._video import DecoderChoice, default_source_id

__all__ = ["LIVE_URL_SCHEMES", "LivePolicy", "LiveSource", "is_live"]

log = logging.getLogger(__name__)

LivePolicy = Literal["latest", "every"]
"""``latest``: always work on the newest frame; what cannot be processed in time is dropped
and counted. ``every``: process every frame; a slow pipeline slows the reading down (the
runtime's ``block``), and the stream backs up at the sender."""

LIVE_URL_SCHEMES = (
    "rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://",
    "srt://",
)
"""URL schemes :class:`LiveSource` accepts (besides ``/dev/video*`` cameras)."""

_Picture = tuple[torch.Tensor, "torch.cuda.Event | None", "float | None", bool]
"""A decoded picture: RGB surface, its ready event (NVDEC), pts in seconds, keyframe."""

def is_live(uri: str) -> bool:
    """Whether ``uri`` is a live input by its form: a camera device (``/dev/video*``), an
    RTSP/RTMP/UDP/TCP/SRT URL, or an HLS playlist (``http(s)://…/….m3u8``). Other HTTP URLs
    may be files or live streams (MJPEG): use :class:`LiveSource` explicitly for those."""
    if uri.startswith("/dev/video"):
        return True
    if uri.startswith(("http://", "https://")):
        return uri.split("?", 1)[0].endswith(".m3u8")
    return uri.startswith(LIVE_URL_SCHEMES)


def _redact(uri: str) -> str:
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", uri)


def _reason(exc: BaseException) -> str:
    """FFmpeg's words for ``exc``, without the file name PyAV appends (it holds the URL,
    which the message names already, redacted)."""
    text = getattr(exc, "strerror", None)
    return str(text) if text else str(exc)


class _Fatal(SourceError):
    """A failure that retrying cannot fix (unknown protocol, refused credentials)."""


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
    outage; only what retrying cannot fix fails at once: an unsupported protocol, refused
    credentials, a stream without video (bad URL forms are refused by the constructor).
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
        uri = str(uri)
        if not (uri.startswith(LIVE_URL_SCHEMES) or uri.startswith("/dev/video")):
            raise ValueError(
                f"uri must be a live stream URL ({', '.join(LIVE_URL_SCHEMES)}) or a camera "
                f"device (/dev/video*), got {_redact(uri)!r}"
            )
        if "://" in uri and not re.match(r"^[a-z]+://[^/?#\s]+", uri):
            raise ValueError(f"uri has no host: {_redact(uri)!r}")
        if policy not in ("latest", "every"):
            raise ValueError(f"policy must be 'latest' or 'every', got {policy!r}")
        if transport not in ("tcp", "udp"):
            raise ValueError(f"transport must be 'tcp' or 'udp', got {transport!r}")
        if decoder not in ("auto", "nvdec", "pyav"):
            raise ValueError(f"decoder must be 'auto', 'nvdec' or 'pyav', got {decoder!r}")
        for name, value in (
            ("open_timeout_seconds", open_timeout_seconds),
            ("read_timeout_seconds", read_timeout_seconds),
            ("backoff_initial_seconds", backoff_initial_seconds),
            ("max_lag_seconds", max_lag_seconds),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if backoff_max_seconds < backoff_initial_seconds:
            raise ValueError(
                f"backoff_max_seconds ({backoff_max_seconds}) must be >= "
                f"backoff_initial_seconds ({backoff_initial_seconds})"
            )
        if max_reconnects is not None and max_reconnects < 0:
            raise ValueError(f"max_reconnects must be >= 0 or None, got {max_reconnects}")
        self.uri = uri
        self.source_id = source_id or default_source_id(uri.replace("/dev/", "dev_"))
        self.live_policy: LivePolicy = policy
        self.policy: Policy = "latest" if policy == "latest" else "block"
        self.transport = transport
        self.decoder: DecoderChoice = decoder
        self.decoder_used: Literal["nvdec", "pyav"] | None = None
        self.device = torch.device("cpu")
        self.open_timeout_seconds = open_timeout_seconds
        self.read_timeout_seconds = read_timeout_seconds
        self.max_reconnects = max_reconnects
        self.backoff_initial_seconds = backoff_initial_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.max_lag_seconds = max_lag_seconds
        self._options = dict(options or {})
        self._max_pixels = max_pixels
        self._stop = threading.Event()
        self._random = random.Random()
        self.errors: collections.deque[str] = collections.deque(maxlen=16)
        """The latest outages (the runtime records them on the session when it ends)."""
        self._connected = False
        self._reconnects = 0
        self._failed_attempts = 0
        self._skipped = 0
        self._last_gap: float | None = None
        self._container: Any = None
        self._nvdec: NvdecDecoder | None = None
        self._seq = 0

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
        failures = 0  # consecutive failed attempts
        last_frame_at: float | None = None  # monotonic receive time of the last frame out
        outage = False
        while not self._stop.is_set():
            delivered = False
            try:
                with contextlib.closing(self._connection()) as connection:
                    for frame in connection:
                        received = frame.__dict__["_t_received"]
                        if outage and last_frame_at is not None:
                            gap = received - last_frame_at
                            frame.attributes["live.gap_seconds"] = round(gap, 6)
                            self._last_gap = gap
                            self._reconnects += 1
                            log.info("source %s: frames again after %.2f s", self.source_id, gap)
                        outage, delivered, failures = False, True, 0
                        last_frame_at = received
                        yield frame
                reason = f"the stream from {_redact(self.uri)} ended"
            except _Fatal:
                raise
            except SourceError as exc:
                reason = exc.reason
            finally:
                self._disconnect()
            if self._stop.is_set():
                return
            if not delivered:
                self._failed_attempts += 1
            failures += 1
            outage = True
            message = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {reason}"
            self.errors.append(message)
            if self.max_reconnects is not None and failures > self.max_reconnects:
                raise SourceError(
                    self.source_id,
                    f"gave up after {self.max_reconnects} reconnect attempts: {reason}",
                )
            delay = min(
                self.backoff_max_seconds, self.backoff_initial_seconds * 2 ** (failures - 1)
            ) * self._random.uniform(0.75, 1.25)
            log.warning(
                "source %s: %s; reconnecting in %.1f s", self.source_id, reason, delay
            )
            self._stop.wait(delay)

    def stop(self) -> None:
        """End ``frames()`` soon (see the class docs); safe from any thread, idempotent."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._disconnect()

    def live_statistics(self) -> LiveStatistics:
        """The connection's state now (read by the pipeline's ``statistics()``)."""
        return LiveStatistics(
            uri=_redact(self.uri),
            connected=self._connected,
            reconnects=self._reconnects,
            failed_attempts=self._failed_attempts,
            frames_skipped=self._skipped,
            last_gap_seconds=self._last_gap,
            last_error=self.errors[-1] if self.errors else None,
        )

    # -- one connection -----------------------------------------------------------------

    def _open(self) -> Any:
        options = dict(self._options)
        micros = str(int(self.read_timeout_seconds * 1e6))
        fmt: str | None = None
        if self.uri.startswith("/dev/video"):
            fmt = "v4l2"
        else:
            options.setdefault("rw_timeout", micros)
        if self.uri.startswith(("rtsp://", "rtsps://")):
            options.setdefault("rtsp_transport", self.transport)
            options.setdefault("timeout", micros)  # RTSP's socket I/O timeout
        where = _redact(self.uri)
        started = time.monotonic()
        try:
            # PyAV's interrupt callback is the watchdog: it aborts any blocking FFmpeg call
            # that takes longer than the open timeout, and each packet read (av_read_frame)
            # that takes longer than the read timeout, whatever the protocol's own options do.
            container = av.open(
                self.uri, mode="r", format=fmt, options=options,
                timeout=(self.open_timeout_seconds, self.read_timeout_seconds),
            )
        except (av.error.ProtocolNotFoundError, av.error.DemuxerNotFoundError) as exc:
            raise _Fatal(self.source_id, f"cannot read {where}: {_reason(exc)}") from exc
        except (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError,
                PermissionError) as exc:
            raise _Fatal(self.source_id, f"access refused to {where}: {_reason(exc)}") from exc
        except (av.error.FFmpegError, OSError) as exc:
            # An interrupted open surfaces as whatever the protocol made of it (RTSP:
            # "invalid data"), so the clock says whether it was the timeout.
            if time.monotonic() - started >= 0.9 * self.open_timeout_seconds:
                reason = f"no answer within {self.open_timeout_seconds} s"
            else:
                reason = _reason(exc)
            raise SourceError(self.source_id, f"cannot open {where}: {reason}") from exc
        if not container.streams.video:
            container.close()
            raise _Fatal(self.source_id, f"no video stream in {where}")
        return container

    def _connection(self) -> Generator[Frame, None, None]:
        """The frames of one connection; raises :class:`SourceError` when it is lost."""
        container = self._container = self._open()
        stream = container.streams.video[0]
        codec = stream.codec_context.name or ""
        time_base = float(stream.time_base) if stream.time_base else None
        use_nvdec = self.decoder == "nvdec" or (
            self.decoder == "auto" and nvdec_available(self.device, codec)
        )
        if use_nvdec:
            device = self.device if self.device.type == "cuda" else torch.device("cuda")
            self._nvdec = NvdecDecoder(
                codec, time_base=time_base, device=device, source_id=self.source_id,
                uri=_redact(self.uri),
            )
        self.decoder_used = "nvdec" if use_nvdec else "pyav"
        # CPU: the stream's own decoder (parameters, extradata, raw formats all set up).
        # Default slice threading: frame threading would delay each picture by a frame per
        # thread, which a live stream pays as lag.
        cpu = stream.codec_context
        annexb = annexb_filter(stream) if use_nvdec else None
        # RTSP carries H.264/HEVC parameter sets in the SDP (extradata, Annex B): NVDEC only
        # sees packets, so the first keyframe gets them in front.
        extradata = bytes(stream.codec_context.extradata or b"")
        prefix = extradata if use_nvdec and extradata[:3] in (b"\0\0\1", b"\0\0\0") else b""
        received: dict[float | None, tuple[float, float]] = {}  # pts seconds -> (monotonic, unix)
        started = False  # decoding began at a keyframe
        skipping = False  # behind by more than max_lag_seconds: waiting for a keyframe
        backlog = Backlog()
        stalled = False
        where = _redact(self.uri)
        with contextlib.closing(container.demux(stream)) as packets:
            while not self._stop.is_set():
                if stalled:
                    raise SourceError(
                        self.source_id, f"no data from {where} for {self.read_timeout_seconds} s"
                    )
                asked = time.monotonic()
                try:
                    packet = next(packets, None)
                except (av.error.FFmpegError, OSError) as exc:
                    if time.monotonic() - asked >= 0.9 * self.read_timeout_seconds:
                        reason = f"no data from {where} for {self.read_timeout_seconds} s"
                    else:
                        reason = f"lost {where}: {_reason(exc)}"
                    raise SourceError(self.source_id, reason) from exc
                if packet is None:
                    return
                now, unix = time.monotonic(), time.time()
                # An interrupted read first returns what FFmpeg's parser held back (the last
                # picture before the stall): take it, then end the connection, rather than
                # wait a second read timeout.
                stalled = now - asked >= self.read_timeout_seconds
                if not packet.size:
                    continue
                self._connected = True
                keyframe = bool(packet.is_keyframe)
                pts = packet.pts * time_base if packet.pts is not None and time_base else None
                stamp = packet.dts if packet.dts is not None else packet.pts
                behind = 0.0
                if stamp is not None and time_base:
                    behind = backlog.update(now, stamp * time_base)
                    if behind > self.max_lag_seconds and self.live_policy == "latest":
                        skipping = started
                if not started or skipping:
                    if not keyframe:
                        self._skipped += started
                        continue
                    started, skipping = True, False
                # Lag counts from when the packet would have arrived had reading kept up.
                arrived = (now - behind, unix - behind)
                if pts is not None:
                    received[pts] = arrived
                    if len(received) > 64:
                        del received[next(iter(received))]
                pictures = self._decode(packet, cpu, annexb, prefix, keyframe, time_base)
                prefix = b""
                for rgb, ready, seconds, key in pictures:
                    at_now, at_unix = received.pop(seconds, arrived)
                    yield self._frame(rgb, ready, seconds, key, codec, at_now, at_unix)

    def _decode(
        self, packet: Any, cpu: Any, annexb: Any, prefix: bytes, keyframe: bool,
        time_base: float | None,
    ) -> list[_Picture]:
        nvdec = self._nvdec
        try:
            if nvdec is None:
                out: list[_Picture] = []
                for picture in cpu.decode(packet):
                    if picture.width * picture.height > self._max_pixels:
                        raise _Fatal(
                            self.source_id,
                            f"picture of {picture.width}x{picture.height} exceeds "
                            f"max_pixels={self._max_pixels}",
                        )
                    rgb = torch.from_numpy(picture.to_ndarray(format="rgb24"))
                    # The same expression as the packet's pts in seconds: a dict key.
                    seconds = (
                        None if picture.pts is None or not time_base
                        else picture.pts * time_base
                    )
                    out.append((rgb.to(self.device), None, seconds, bool(picture.key_frame)))
                return out
            decoded: list[_Picture] = []
            with torch.cuda.stream(nvdec.cuda_stream):
                for item in annexb.filter(packet) if annexb is not None else [packet]:
                    decoded.extend(
                        nvdec.decode(prefix + bytes(item), pts=item.pts, keyframe=keyframe)
                    )
                    prefix = b""
            return decoded
        except av.error.FFmpegError as exc:
            # A damaged packet (UDP loss, a camera glitch): end this connection; the next
            # one starts again at a keyframe.
            raise SourceError(
                self.source_id, f"corrupt {packet.stream.codec_context.name} data: {_reason(exc)}"
            ) from exc

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

    def _disconnect(self) -> None:
        self._connected = False
        container, self._container = self._container, None
        nvdec, self._nvdec = self._nvdec, None
        if nvdec is not None:
            nvdec.close()
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()

    def __repr__(self) -> str:
        return (
            f"LiveSource({_redact(self.uri)!r}, source_id={self.source_id!r}, "
            f"policy={self.live_policy!r})"
        )
