"""The blocking :class:`Source`: the sending half of the client over a transport
:class:`~torchstream.transport.Sender`."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

from torchstream._errors import ClosedResourceError, MissingDependencyError
from torchstream.client._requests import (
    Buffer,
    ImageFormat,
    Outgoing,
    RawFormat,
    Requests,
    SendResult,
)
from torchstream.client._sockets import (
    SOURCE_TYPES,
    SourceStatistics,
    check_endpoint,
    check_timeout,
)
from torchstream.transport._channel import Sender
from torchstream.transport._endpoint import Endpoint, SocketOptions

try:
    import zmq
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("pyzmq", "transport") from exc

__all__ = ["Source"]

_OPTIONS = SocketOptions()


class Source:
    """Sends images, raw pictures and encoded video packets to a pipeline module.

    ``endpoint`` is where the module receives, as a ``dealer``, ``req`` or ``push``
    endpoint: ``dealer+connect:tcp://host:5555`` for a module on ``router+bind``,
    ``req+connect:…`` for one on ``rep+bind`` (each send returns once the module answered
    that it has the message: one message in flight, slower, but nothing sent is unaccounted
    for). One source object carries any number of streams, each named by its ``source_id``
    and numbered from seq 0.

    Every send returns a :class:`SendResult` with the trace id the request started (the
    active OpenTelemetry span's trace, if any; a new one otherwise — marked sampled for
    ``trace_sample_ratio`` of them, so a module tracing at 1 % is not made to trace every
    request —, or ``traceparent=`` to continue a trace you were given). Input the module
    would reject raises ``ValueError``
    before anything is sent. When the module does not keep up, a send blocks (up to
    ``send_timeout_seconds``, None: indefinitely), then raises
    :class:`~torchstream.OverloadedError` with nothing sent (req: or unanswered, see
    :class:`~torchstream.transport.Sender` for what a req send raises when the module goes
    away).

    End each stream with :meth:`send_eos`; closing does not end streams (the module closes
    their sessions after its idle timeout). Use a source from one thread at a time.
    """

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        options: SocketOptions = _OPTIONS,
        send_timeout_seconds: float | None = None,
        trace_sample_ratio: float = 1.0,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        check_timeout("send_timeout_seconds", send_timeout_seconds)
        parsed = check_endpoint(endpoint, SOURCE_TYPES, "Source")
        self._sender = Sender(
            parsed, context=context, options=options, send_timeout_seconds=send_timeout_seconds
        )
        self.endpoint = self._sender.endpoint
        self._requests = Requests(trace_sample_ratio=trace_sample_ratio)
        self._sent = 0
        self._ended = 0
        self._closed = False

    def send_image(
        self,
        source_id: str,
        data: Buffer,
        *,
        format: ImageFormat | None = None,
        pts_seconds: float | None = None,
        attributes: Mapping[str, Any] | None = None,
        traceparent: str | None = None,
    ) -> SendResult:
        """Send the bytes of a JPEG or PNG file as the next frame of ``source_id``.

        ``format`` is read from the bytes when None. ``attributes`` (JSON-like values,
        ``{"gps.lat": 48.85}``) travel as the frame's attributes. ``data`` is sent without a
        copy: do not modify it while the call runs."""
        self._check_open()
        return self._send(
            self._requests.image(
                source_id, data, format=format, pts_seconds=pts_seconds, attributes=attributes,
                traceparent=traceparent,
            )
        )

    def send_frame(
        self,
        source_id: str,
        pixels: object,
        *,
        format: RawFormat = "rgb24",
        width: int | None = None,
        height: int | None = None,
        pts_seconds: float | None = None,
        attributes: Mapping[str, Any] | None = None,
        traceparent: str | None = None,
    ) -> SendResult:
        """Send an uncompressed picture: a ``uint8`` NumPy array or CPU tensor (``(H, W, 3)``
        for rgb24 / bgr24, ``(H, W, 4)`` rgba, ``(H, W)`` gray8, ``(H * 3 // 2, W)`` nv12),
        or bytes with ``width`` and ``height``."""
        self._check_open()
        return self._send(
            self._requests.raw(
                source_id, pixels, format=format, width=width, height=height,
                pts_seconds=pts_seconds, attributes=attributes, traceparent=traceparent,
            )
        )

    def send_packet(
        self,
        source_id: str,
        data: Buffer,
        *,
        codec: str,
        width: int,
        height: int,
        time_base: tuple[int, int],
        pts: int | None = None,
        dts: int | None = None,
        duration: int | None = None,
        keyframe: bool = False,
        extradata: bytes | None = None,
        pts_seconds: float | None = None,
        attributes: Mapping[str, Any] | None = None,
        traceparent: str | None = None,
    ) -> SendResult:
        """Send one encoded video packet (``codec`` is FFmpeg's name; H.264/HEVC in Annex B).
        ``pts`` / ``dts`` / ``duration`` are in ``time_base`` units (``dts`` and ``duration``
        let a sink re-mux the packets); ``pts_seconds`` defaults to ``pts``
        in seconds. Send ``extradata`` with the first packet and keyframes."""
        self._check_open()
        return self._send(
            self._requests.packet(
                source_id, data, codec=codec, width=width, height=height, time_base=time_base,
                pts=pts, dts=dts, duration=duration, keyframe=keyframe, extradata=extradata,
                pts_seconds=pts_seconds, attributes=attributes, traceparent=traceparent,
            )
        )

    def send_eos(
        self,
        source_id: str,
        *,
        ack_timeout_seconds: float | None = 10.0,
        traceparent: str | None = None,
    ) -> SendResult:
        """End ``source_id``'s stream; its next frame starts a new stream at seq 0.

        On dealer and req, wait up to ``ack_timeout_seconds`` (None: indefinitely) for the
        module's acknowledgement, which means it received every frame sent before; raise
        ``TimeoutError`` without one. push has no way back: this returns once queued."""
        self._check_open()
        out = self._requests.end_of_stream(source_id, traceparent=traceparent)
        self._sender.send_eos(
            source_id,
            last_seq=out.sent.seq,
            traceparent=out.sent.traceparent,
            ack_timeout_seconds=ack_timeout_seconds,
        )
        self._ended += 1
        return out.sent

    def _send(self, out: Outgoing) -> SendResult:
        self._sender.send(out.message, out.payload)
        self._sent += 1
        return out.sent

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError(f"{self.endpoint} is closed")

    def statistics(self) -> SourceStatistics:
        return SourceStatistics(str(self.endpoint), self._sent, self._ended)

    def close(self) -> None:
        """Close the socket (idempotent); queued messages get ``options.linger_seconds`` to
        go out. Afterwards sends raise :class:`~torchstream.ClosedResourceError`."""
        self._closed = True
        self._sender.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
