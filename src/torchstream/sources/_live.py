"""Live inputs: a camera or network stream read packet by packet by :class:`LiveDemuxer`, which
reconnects by itself and never ends. :class:`~torchstream.sources.LiveSource` decodes what it
delivers; the source adapter (``torchstream source url|camera``) sends it to a module."""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import re
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import av

from torchstream._errors import SourceError
from torchstream.codecs._pyav import EncodedPacket, annexb_filter
from torchstream.pipeline._statistics import LiveStatistics
from torchstream.sources._backlog import Backlog
from torchstream.sources._video import default_source_id

__all__ = ["LIVE_URL_SCHEMES", "LiveDemuxer", "LivePacket", "LiveStream", "is_live"]

log = logging.getLogger(__name__)

LIVE_URL_SCHEMES = (
    "rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://",
    "srt://",
)
"""URL schemes live inputs may have (besides ``/dev/video*`` cameras)."""


def is_live(uri: str) -> bool:
    """Whether ``uri`` is a live input by its form: a camera device (``/dev/video*``), an
    RTSP/RTMP/UDP/TCP/SRT URL, or an HLS playlist (``http(s)://…/….m3u8``). Other HTTP URLs
    may be files or live streams (MJPEG): use :class:`LiveSource` explicitly for those."""
    if uri.startswith("/dev/video"):
        return True
    if uri.startswith(("http://", "https://")):
        return uri.split("?", 1)[0].endswith(".m3u8")
    return uri.startswith(LIVE_URL_SCHEMES)


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***``."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", uri)


def _reason(exc: BaseException) -> str:
    """FFmpeg's words for ``exc``, without the file name PyAV appends (it holds the URL,
    which the message names already, redacted)."""
    text = getattr(exc, "strerror", None)
    return str(text) if text else str(exc)


class Fatal(SourceError):
    """A failure that retrying cannot fix (an unsupported protocol, no video stream)."""


@dataclass(frozen=True)
class LiveStream:
    """The video stream of one connection, as its consumer needs it to decode the packets."""

    codec: str
    width: int
    height: int
    time_base: Fraction | None
    pixel_format: str | None
    """FFmpeg's name of the pixel format (what ``rawvideo`` packets hold), when known."""
    extradata: bytes | None
    """The codec's out-of-band set-up for a decoder (None for H.264/HEVC: their parameter
    sets travel in front of the connection's first keyframe instead)."""


@dataclass(frozen=True)
class LivePacket:
    """One packet of a live input, as :class:`LiveDemuxer` delivers it."""

    packet: EncodedPacket
    stream: LiveStream
    received_monotonic: float
    """``time.monotonic()`` when it arrived, or would have had reading kept up."""
    received_unix: float
    """The same moment as Unix time."""
    restart: bool
    """The first packet of a connection: a keyframe (with the parameter sets in front, for
    H.264/HEVC); decoding must start afresh here, and timestamps may start again at 0."""
    gap_seconds: float | None
    """On the first packet after an outage: the time since the last packet before it."""


class LiveDemuxer:
    """The video packets of one live input (an RTSP/RTSPS/RTMP/HTTP/UDP/SRT stream or a V4L2
    camera ``/dev/video*``), demuxed by FFmpeg (PyAV), never decoded, across outages.

    :meth:`packets` yields :class:`LivePacket`: H.264/HEVC in Annex B, each connection
    starting at a keyframe with the parameter sets in front of it (when the stream carries
    them out of band, as RTSP's SDP does), marked ``restart``; the first packet after an
    outage also carries ``gap_seconds``.

    **Outages.** A connection that cannot be opened within ``open_timeout_seconds`` or
    delivers no packet for ``read_timeout_seconds`` (a dead camera, a hung server, a pulled
    cable) is closed and opened again after a backoff: ``backoff_initial_seconds``, doubled
    at each consecutive failure up to ``backoff_max_seconds``, each wait jittered by ±25 % so
    that cameras behind one switch do not reconnect in lockstep. A stream that ends is
    treated the same way, as is a connection whose data its consumer could not use
    (:meth:`drop_connection`). It goes on forever unless ``max_reconnects`` is set: after
    that many consecutive failed attempts :meth:`packets` raises
    :class:`~torchstream.SourceError`. Only what retrying cannot fix raises at once: an
    unsupported protocol, a stream without video (refused access is retried: restarting
    servers answer so too). Every outage is logged (warning) and kept in ``errors``.

    **Falling behind.** With ``max_lag_seconds``, when the consumer takes packets more than
    that much later than the stream delivers them, packets are skipped up to the next
    keyframe (counted in ``statistics().frames_skipped``); None never skips.

    **Close.** :meth:`stop` (any thread; or ``stop_event`` set by the owner) ends
    :meth:`packets` at once while waiting to reconnect, after the next packet while
    streaming, and within the open/read timeouts while FFmpeg is blocked on the network.
    :meth:`close` (the reading thread) frees the connection.
    """

    def __init__(
        self,
        uri: str,
        *,
        source_id: str | None = None,
        transport: Literal["tcp", "udp"] = "tcp",
        open_timeout_seconds: float = 10.0,
        read_timeout_seconds: float = 5.0,
        max_reconnects: int | None = None,
        backoff_initial_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        max_lag_seconds: float | None = None,
        options: dict[str, str] | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        uri = str(uri)
        if not (uri.startswith(LIVE_URL_SCHEMES) or uri.startswith("/dev/video")):
            raise ValueError(
                f"uri must be a live stream URL ({', '.join(LIVE_URL_SCHEMES)}) or a camera "
                f"device (/dev/video*), got {redact(uri)!r}"
            )
        if "://" in uri and not re.match(r"^[a-z]+://[^/?#\s]+", uri):
            raise ValueError(f"uri has no host: {redact(uri)!r}")
        if transport not in ("tcp", "udp"):
            raise ValueError(f"transport must be 'tcp' or 'udp', got {transport!r}")
        for name, value in (
            ("open_timeout_seconds", open_timeout_seconds),
            ("read_timeout_seconds", read_timeout_seconds),
            ("backoff_initial_seconds", backoff_initial_seconds),
            ("max_lag_seconds", 1.0 if max_lag_seconds is None else max_lag_seconds),
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
        self.transport = transport
        self.open_timeout_seconds = open_timeout_seconds
        self.read_timeout_seconds = read_timeout_seconds
        self.max_reconnects = max_reconnects
        self.backoff_initial_seconds = backoff_initial_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.max_lag_seconds = max_lag_seconds
        self._options = dict(options or {})
        self._owns_stop = stop_event is None
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._random = random.Random()
        self.errors: collections.deque[str] = collections.deque(maxlen=16)
        """The latest outages, newest last."""
        self._connected = False
        self._reconnects = 0
        self._failed_attempts = 0
        self._skipped = 0
        self._last_gap: float | None = None
        self._last_arrival: float | None = None  # monotonic arrival of the last packet out
        self._outage = False
        self._dropped: str | None = None
        self._container: Any = None

    def packets(self) -> Generator[LivePacket, None, None]:
        """The packets, connection after connection, until :meth:`stop` (see the class)."""
        failures = 0  # consecutive failed attempts
        while not self._stop.is_set():
            delivered = False
            try:
                with contextlib.closing(self._connection()) as connection:
                    for packet in connection:
                        delivered, failures = True, 0
                        yield packet
                reason = f"the stream from {redact(self.uri)} ended"
            except Fatal:
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
            self._outage = True
            self.errors.append(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {reason}")
            if self.max_reconnects is not None and failures > self.max_reconnects:
                raise SourceError(
                    self.source_id,
                    f"gave up after {self.max_reconnects} reconnect attempts: {reason}",
                )
            delay = min(
                self.backoff_max_seconds, self.backoff_initial_seconds * 2 ** (failures - 1)
            ) * self._random.uniform(0.75, 1.25)
            log.warning("source %s: %s; reconnecting in %.1f s", self.source_id, reason, delay)
            self._stop.wait(delay)

    def drop_connection(self, reason: str) -> None:
        """The consumer cannot use this connection's data (a corrupt packet): close it after
        the packet it holds and reconnect, as after an outage. The reading thread only."""
        self._dropped = reason

    def stop(self) -> None:
        """End :meth:`packets` soon (see the class docs); safe from any thread, idempotent."""
        self._stop.set()

    def close(self) -> None:
        """Free the connection; :meth:`packets` ends (an owner's ``stop_event`` is left as it
        is: other demuxers may share it)."""
        if self._owns_stop:
            self._stop.set()
        self._disconnect()

    def statistics(self) -> LiveStatistics:
        """The connection's state now (safe from any thread)."""
        return LiveStatistics(
            uri=redact(self.uri),
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
        where = redact(self.uri)
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
            raise Fatal(self.source_id, f"cannot read {where}: {_reason(exc)}") from exc
        except (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError,
                PermissionError) as exc:
            # Retried like an outage, not fatal: FFmpeg reports some transient RTSP answers
            # of a restarting server as EPERM too (a soak run lost 2 of 8 cameras for good
            # to it), and a camera whose credentials were changed comes back once they are
            # fixed. The reason stays visible in errors and live statistics.
            raise SourceError(
                self.source_id,
                f"access refused to {where}: {_reason(exc)} (retrying; if this goes on, "
                "check the credentials in the URL)",
            ) from exc
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
            raise Fatal(self.source_id, f"no video stream in {where}")
        return container

    def _connection(self) -> Generator[LivePacket, None, None]:
        """The packets of one connection; raises :class:`SourceError` when it is lost."""
        container = self._container = self._open()
        stream = container.streams.video[0]
        context = stream.codec_context
        codec = context.name or ""
        time_base = Fraction(stream.time_base) if stream.time_base else None
        seconds_per_unit = float(time_base) if time_base else None
        annexb = annexb_filter(stream)
        extradata = bytes(context.extradata or b"")
        # RTSP carries H.264/HEVC parameter sets in the SDP (extradata, Annex B): a decoder
        # that only sees packets needs them in front of the first keyframe. (MP4-style
        # extradata is put in front of keyframes by the Annex B filter itself.)
        annexb_extradata = extradata[:3] in (b"\0\0\1", b"\0\0\0")
        prefix = extradata if annexb is not None and annexb_extradata else b""
        info = LiveStream(
            codec=codec,
            width=int(context.width or 0),
            height=int(context.height or 0),
            time_base=time_base,
            pixel_format=context.format.name if context.format is not None else None,
            extradata=None if annexb is not None or not extradata else extradata,
        )
        first = True
        started = False  # delivery began at a keyframe
        skipping = False  # behind by more than max_lag_seconds: waiting for a keyframe
        backlog = Backlog()
        stalled = False
        where = redact(self.uri)
        with contextlib.closing(container.demux(stream)) as packets:
            while not self._stop.is_set():
                if self._dropped is not None:
                    reason, self._dropped = self._dropped, None
                    raise SourceError(self.source_id, reason)
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
                stamp = packet.dts if packet.dts is not None else packet.pts
                behind = 0.0
                if stamp is not None and seconds_per_unit:
                    behind = backlog.update(now, stamp * seconds_per_unit)
                    if self.max_lag_seconds is not None and behind > self.max_lag_seconds:
                        skipping = started
                if not started or skipping:
                    if not keyframe:
                        self._skipped += started
                        continue
                    started, skipping = True, False
                # Lag counts from when the packet would have arrived had reading kept up.
                arrived = now - behind
                gap = None
                if first and self._outage and self._last_arrival is not None:
                    gap = arrived - self._last_arrival
                    self._last_gap = gap
                    self._reconnects += 1
                    log.info("source %s: data again after %.2f s", self.source_id, gap)
                self._outage = False
                self._last_arrival = arrived
                for item in annexb.filter(packet) if annexb is not None else [packet]:
                    if not item.size:
                        continue
                    yield LivePacket(
                        EncodedPacket(
                            prefix + bytes(item), codec, item.pts, time_base, keyframe,
                            info.width, info.height, item.dts, item.duration or None,
                        ),
                        info, arrived, unix - behind, first, gap,
                    )
                    prefix, first, gap = b"", False, None

    def _disconnect(self) -> None:
        self._connected = False
        self._dropped = None
        container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()

    def __repr__(self) -> str:
        return f"LiveDemuxer({redact(self.uri)!r}, source_id={self.source_id!r})"
