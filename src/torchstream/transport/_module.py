"""Module mode: a pipeline fed by a socket. Frames of many sources arrive multiplexed on one
inbound endpoint, results leave on an outbound endpoint."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from torchstream._draw import AnnotationStyle, annotate
from torchstream._errors import ClosedResourceError, OverloadedError
from torchstream._gc import freeze_startup_heap
from torchstream._types import Sink, Stage
from torchstream.frame import Frame
from torchstream.pipeline import Pipeline
from torchstream.pipeline._session import Session
from torchstream.pipeline._statistics import PipelineHealth, PipelineStatistics
from torchstream.pipeline._tracing import FrameTracer
from torchstream.sinks._images import encode_picture
from torchstream.sources._pushed import PushedSource, decode_threads
from torchstream.sources._video import DecoderChoice
from torchstream.surface import nv12_to_rgb
from torchstream.transport._channel import Receiver, ReceiverStatistics, Sender, SenderStatistics
from torchstream.transport._endpoint import Endpoint
from torchstream.transport._protocol import (
    EndOfStream,
    EndOfStreamAck,
    FrameMessage,
    ImagePayload,
    Message,
    RawPayload,
    ResultAck,
    ResultMessage,
    Shutdown,
)
from torchstream.transport._pushing import push_encoded

__all__ = ["Content", "Module", "ModuleStatistics", "PublishSink"]

log = logging.getLogger(__name__)

Content = Literal["none", "original", "image"]
"""What a result carries besides metadata: nothing, the bytes the frame came as (an image, or
the video packet with the frame's pts), or the annotated frame as a JPEG."""

_RECV_TICK_SECONDS = 0.2
"""How often the receive loop looks up from the socket (stop requests, idle sources)."""
_SEND_TICK_SECONDS = 0.2
"""How often a blocked result send looks up to see whether the module gave up on it."""


class PublishSink:
    """Sends a :class:`ResultMessage` per frame and an :class:`EndOfStream` per finished
    session on ``endpoint`` (pub, push or dealer), from the sink's thread.

    Each result carries the traceparent its frame came with, so a client matches it to its
    request. ``content``: see :data:`Content`; ``image`` draws the frame's objects with
    ``style`` and encodes JPEG on the CPU.

    On a dealer endpoint results are acknowledged: the receiver (a router, e.g. ``torchstream
    sink … --in router+bind:…``) answers each with a :class:`ResultAck` (and each end of
    stream with an :class:`EndOfStreamAck`). Up to ``ack_window`` results wait for their ack
    (a full window blocks, as backpressure); results unacknowledged for
    ``resend_after_seconds`` are sent again with the next result, while waiting on a full
    window, and at the end of their stream: its end of stream goes out once every result
    before it is acknowledged. So a receiver that was killed and restarted gets what it had
    not handled (at least once: it may see a result twice and can drop it by source id and
    seq).
    """

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        content: Content = "none",
        style: AnnotationStyle | None = None,
        name: str = "publish",
        ack_window: int = 256,
        resend_after_seconds: float = 2.0,
    ) -> None:
        if content not in ("none", "original", "image"):
            raise ValueError(f"content must be 'none', 'original' or 'image', got {content!r}")
        self.name = name
        self.content: Content = content
        self._style = style or AnnotationStyle()
        # Reliable endpoints block while the consumer is away; the timeout only lets the
        # wait notice abandon() (a module that must stop), it does not drop anything.
        parsed = Endpoint.parse(endpoint) if isinstance(endpoint, str) else endpoint
        if parsed.socket_type == "req":
            # A req send that times out may have been delivered; the retry loop below would
            # then send copies. dealer acknowledges results without that ambiguity.
            raise ValueError(
                f"{parsed}: results do not go out on req; use dealer+connect (acknowledged "
                "results), push or pub"
            )
        self._sender = Sender(parsed, send_timeout_seconds=_SEND_TICK_SECONDS)
        self._abandoned = threading.Event()
        self._last_seq: dict[str, int] = {}
        self._acked = self._sender.endpoint.socket_type == "dealer"
        self._window = ack_window
        self._resend_after = resend_after_seconds
        # (kind, source id, seq) -> (message, payload, when last sent), oldest first
        self._unacked: collections.OrderedDict[
            tuple[str, str, int | None], tuple[Message, Any, float]
        ] = collections.OrderedDict()
        self.resent = 0
        """Results and ends of stream sent again because no ack came (dealer endpoints)."""

    @property
    def endpoint(self) -> Endpoint:
        return self._sender.endpoint

    def statistics(self) -> SenderStatistics:
        return self._sender.statistics()

    def write(self, frame: Frame) -> None:
        traceparent = frame.__dict__.get("_traceparent")
        description: Any = None
        payload: Any = None
        content: Content = "none"
        if self.content == "original":
            original = frame.__dict__.get("_original")
            if original is not None:
                description, payload = original.description, original.data
                content = "original"
        elif self.content == "image" and frame.surface is not None:
            payload = encode_picture(annotate(frame, self._style), "jpg")
            description, content = ImagePayload(format="jpeg"), "image"
        self._send(
            ResultMessage(
                frame=frame, content=content, payload=description, traceparent=traceparent
            ),
            payload,
        )
        self._last_seq[frame.source_id] = frame.seq

    def end_session(self, session: Session) -> None:
        last = self._last_seq.pop(session.source_id, None)
        if self._acked:  # every result acknowledged (re-sent if need be) before the end
            self._flush()
        self._send(EndOfStream(source_id=session.source_id, last_seq=last), None)
        if self._acked:
            self._flush()

    def _flush(self) -> None:
        """Until everything sent is acknowledged (re-sending what is overdue); raises
        OverloadedError once abandoned."""
        while self._unacked:
            if not self._collect_acks(wait=True):
                self._resend_overdue()

    @property
    def unacknowledged(self) -> int:
        return len(self._unacked)

    def abandon(self) -> None:
        """Stop waiting for an absent consumer: what cannot be sent now fails (counted as
        this sink's errors) instead of blocking. For a module that must stop."""
        self._abandoned.set()

    def _send(self, message: Message, payload: Any) -> None:
        self._send_once(message, payload)
        if not self._acked:
            return
        if isinstance(message, ResultMessage):
            key: tuple[str, str, int | None] = ("result", message.source_id, message.seq)
        else:
            assert isinstance(message, EndOfStream)
            key = ("eos", message.source_id, message.last_seq)
        self._unacked[key] = (message, payload, time.monotonic())
        self._collect_acks(wait=False)
        oldest = next(iter(self._unacked.values()), None)
        if oldest is not None and time.monotonic() - oldest[2] >= self._resend_after:
            self._resend_overdue()  # the receiver may have restarted: catch it up
        while len(self._unacked) >= self._window:  # backpressure: wait for the receiver
            if not self._collect_acks(wait=True):
                self._resend_overdue()

    def _send_once(self, message: Message, payload: Any) -> None:
        while True:
            try:
                self._sender.send(message, payload)
                return
            except OverloadedError:
                if self._abandoned.is_set():
                    raise

    def _collect_acks(self, *, wait: bool) -> bool:
        """Forget what the receiver acknowledged; True if an ack came. ``wait``: wait one
        tick for the first one (raises OverloadedError once abandoned)."""
        got = False
        timeout = _SEND_TICK_SECONDS if wait else 0.0
        while True:
            try:
                message, _ = self._sender.recv(timeout)
            except TimeoutError:
                if wait and not got and self._abandoned.is_set():
                    raise OverloadedError(
                        f"sink {self.name!r}: {len(self._unacked)} results never acknowledged "
                        f"on {self.endpoint}"
                    ) from None
                return got
            key: tuple[str, str, int | None] | None = None
            if isinstance(message, ResultAck):
                key = ("result", message.source_id, message.seq)
            elif isinstance(message, EndOfStreamAck):
                key = ("eos", message.source_id, message.last_seq)
            if key is not None and self._unacked.pop(key, None) is not None:
                got = True
            timeout = 0.0

    def _resend_overdue(self) -> None:
        now = time.monotonic()
        for key, (message, payload, sent) in list(self._unacked.items()):
            if now - sent >= self._resend_after:
                self._send_once(message, payload)
                self._unacked[key] = (message, payload, time.monotonic())
                self._unacked.move_to_end(key)
                self.resent += 1

    def close(self) -> None:
        try:
            if self._acked:
                try:
                    self._flush()
                except OverloadedError:
                    log.warning(
                        "sink %r: closing with %d results unacknowledged on %s",
                        self.name, len(self._unacked), self.endpoint,
                    )
        finally:
            self._sender.close()


@dataclass(frozen=True)
class _Original:
    """What a frame came as, for results with content ``original``."""

    description: Any
    data: Any


@dataclass(frozen=True)
class ModuleStatistics:
    pipeline: PipelineStatistics
    inbound: ReceiverStatistics
    outbound: SenderStatistics | None
    sources_open: int
    messages_refused: dict[str, int]
    """Valid messages the module could not use, by reason (``no_payload``, ``overloaded``,
    ``bad_raw``); malformed ones are in ``inbound.rejected``."""
    results_resent: int = 0
    """Results sent again for want of an acknowledgement (dealer outbound)."""
    results_unacknowledged: int = 0


class Module:
    """Runs ``stages`` on frames received on ``inbound`` and publishes the results.

    Sources appear when their first frame arrives and end at their :class:`EndOfStream`, or
    when nothing came for ``idle_timeout_seconds``; a source id that comes back starts a new
    session. Encoded video packets are decoded per source (NVDEC when the device is CUDA,
    else PyAV); images and raw pixels become one frame each. Backpressure: each source
    queues at most ``max_queued`` undecoded items; past that the receive loop waits (up to
    ``push_timeout_seconds``, then the message is refused and counted), which stops reading
    the socket, so reliable senders block instead of losing frames.

    ``outbound``: where results go (see :class:`PublishSink`); ``sinks``: more sinks (a
    JSON lines file, say). A :class:`Shutdown` carrying ``shutdown_secret`` stops it like
    :meth:`stop`: no new frames are read, the queued ones are finished, then :meth:`run`
    returns. Results that no consumer takes within ``drain_timeout_seconds`` of the stop
    are given up (counted as the publish sink's errors) so the module can exit.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        inbound: Endpoint | str,
        outbound: Endpoint | str | None = None,
        sinks: Sequence[Sink] = (),
        device: str | torch.device = "cpu",
        content: Content = "none",
        style: AnnotationStyle | None = None,
        decoder: DecoderChoice = "auto",
        idle_timeout_seconds: float = 60.0,
        max_queued: int = 64,
        push_timeout_seconds: float | None = 30.0,
        drain_timeout_seconds: float = 30.0,
        shutdown_secret: str | None = None,
        tracer: FrameTracer | None = None,
    ) -> None:
        if idle_timeout_seconds <= 0:
            raise ValueError(f"idle_timeout_seconds must be > 0, got {idle_timeout_seconds}")
        self._receiver = Receiver(inbound, shutdown_secret=shutdown_secret)
        try:
            self._publish = (
                PublishSink(outbound, content=content, style=style) if outbound else None
            )
        except BaseException:
            self._receiver.close()
            raise
        self._sinks: list[Sink] = [*([self._publish] if self._publish else []), *sinks]
        self._stages = list(stages)
        self._device = torch.device(device)
        self._tracer = tracer
        self._content = content
        self._decoder: DecoderChoice = decoder
        self._idle_timeout = idle_timeout_seconds
        self._max_queued = max_queued
        self._push_timeout = push_timeout_seconds
        self._drain_timeout = drain_timeout_seconds
        self._sources: dict[str, PushedSource] = {}
        self._last_seen: dict[str, float] = {}
        self._refused: dict[str, int] = {}
        self._stop = threading.Event()
        self._pipeline: Pipeline | None = None
        self.ready = threading.Event()
        """Set once the pipeline runs and the inbound socket is bound: frames are accepted."""

    @property
    def inbound(self) -> Endpoint:
        return self._receiver.endpoint

    @property
    def outbound(self) -> Endpoint | None:
        return self._publish.endpoint if self._publish is not None else None

    @property
    def pipeline(self) -> Pipeline | None:
        return self._pipeline

    def stop(self) -> None:
        """Ask :meth:`run` to finish: stop reading, drain what was accepted, return. Safe
        from any thread and from a signal handler."""
        self._stop.set()

    def run(self) -> PipelineStatistics:
        """Serve until :meth:`stop` or an authorised :class:`Shutdown`; returns the final
        statistics."""
        try:
            with Pipeline(
                self._stages, self._sinks, device=self._device, tracer=self._tracer,
                shared_source_threads=decode_threads(self._device),
            ) as pipeline:
                self._pipeline = pipeline
                freeze_startup_heap()
                self.ready.set()
                while not self._stop.is_set():
                    try:
                        message, payload = self._receiver.recv(_RECV_TICK_SECONDS)
                    except TimeoutError:
                        self._end_idle_sources()
                        continue
                    self._handle(message, payload)
                for source in self._sources.values():
                    source.end()
                # Draining ends with the pipeline's close (sinks flushed); past the timeout,
                # results nobody takes are given up so that the module can exit.
                give_up = threading.Timer(self._drain_timeout, self._abandon_results)
                give_up.daemon = True
                give_up.start()
                pipeline.wait()  # every accepted frame through the stages
            give_up.cancel()
            return pipeline.statistics()
        finally:
            self._receiver.close()

    def _abandon_results(self) -> None:
        if self._publish is not None:
            log.warning(
                "module: results still unsent %.0f s after the stop (no consumer on %s); "
                "giving up on them", self._drain_timeout, self._publish.endpoint,
            )
            self._publish.abandon()

    def health(self) -> PipelineHealth:
        """Alive while the pipeline runs; ready once frames are accepted (models set up,
        inbound socket bound) and until a stop begins. A module needs no source to be ready:
        sources come to it."""
        pipeline = self._pipeline
        if pipeline is None:
            return PipelineHealth(False, False, "the module is not running")
        state = pipeline.health()
        if not state.alive:
            return state
        if self._stop.is_set():
            return PipelineHealth(True, False, "stopping: draining what was received")
        return PipelineHealth(True, True, f"accepting frames on {self.inbound}")

    def statistics(self) -> ModuleStatistics:
        pipeline = self._pipeline
        if pipeline is None:
            raise RuntimeError("the module is not running")
        return ModuleStatistics(
            pipeline=pipeline.statistics(),
            inbound=self._receiver.statistics(),
            outbound=self._publish.statistics() if self._publish is not None else None,
            sources_open=sum(1 for s in self._sources.values() if not s.ended),
            messages_refused=dict(self._refused),
            results_resent=self._publish.resent if self._publish is not None else 0,
            results_unacknowledged=(
                self._publish.unacknowledged if self._publish is not None else 0
            ),
        )

    # -- the receive loop -------------------------------------------------------------

    def _refuse(self, reason: str, message: Message, detail: str) -> None:
        count = self._refused.get(reason, 0) + 1
        self._refused[reason] = count
        if count == 1 or count % 1000 == 0:
            log.warning("module refused %r (%s, %d so far): %s", message, reason, count, detail)

    def _handle(self, message: Message, payload: memoryview | None) -> None:
        if isinstance(message, Shutdown):
            log.info("module: shutdown requested (%s)", message.reason or "no reason given")
            self._stop.set()
        elif isinstance(message, EndOfStream):
            source = self._sources.get(message.source_id)
            if source is not None:
                source.end()
        elif isinstance(message, FrameMessage):
            self._frame(message, payload)

    def _frame(self, message: FrameMessage, payload: memoryview | None) -> None:
        if message.payload is None or payload is None:
            self._refuse("no_payload", message, "a frame message without pixels or bytes")
            return
        attributes = dict(message.metadata.attributes) if message.metadata is not None else {}
        for attempt in (1, 2):
            source = self._source(message.source_id)
            try:
                self._push(source, message, payload, attributes)
            except ClosedResourceError:
                # The source ended meanwhile (it failed, or its session was evicted): the next
                # attempt starts a new one.
                self._sources.pop(message.source_id, None)
                if attempt == 2:
                    raise
                continue
            except OverloadedError as exc:
                self._refuse("overloaded", message, str(exc))
            except ValueError as exc:
                self._refuse("bad_raw", message, str(exc))
            break
        self._last_seen[message.source_id] = time.monotonic()

    def _push(
        self,
        source: PushedSource,
        message: FrameMessage,
        payload: memoryview,
        attributes: dict[str, Any],
    ) -> None:
        description = message.payload
        common: dict[str, Any] = {
            "attributes": attributes,
            "traceparent": message.traceparent,
            "seq": message.seq,
            "timeout": self._push_timeout,
            # For results with content "original": what the frame came as.
            "original": _Original(description, payload) if self._content == "original" else None,
        }
        if push_encoded(source, message, payload, **common):
            return
        if isinstance(description, RawPayload):
            source.push_raw(_raw_to_rgb(description, payload), pts_seconds=message.pts_seconds,
                            **common)

    def _source(self, source_id: str) -> PushedSource:
        source = self._sources.get(source_id)
        if source is not None and not source.ended:
            return source
        pipeline = self._pipeline
        assert pipeline is not None
        # The previous session of this id may still be draining after its end of stream.
        deadline = time.monotonic() + 30.0
        while source_id in pipeline.sources() and time.monotonic() < deadline:
            time.sleep(0.005)
        source = PushedSource(
            source_id,
            decoder=self._decoder,
            max_queued=self._max_queued,
        )
        pipeline.add_source(source)
        self._sources[source_id] = source
        return source

    def _end_idle_sources(self) -> None:
        now = time.monotonic()
        for source_id, seen in list(self._last_seen.items()):
            if now - seen < self._idle_timeout:
                continue
            del self._last_seen[source_id]
            source = self._sources.pop(source_id, None)
            if source is not None:
                log.info("module: source %s idle for %.0f s, ending it", source_id, now - seen)
                source.end()


def _raw_to_rgb(description: RawPayload, payload: memoryview) -> torch.Tensor:
    """Raw pixels of any supported layout → a ``uint8 (H, W, 3)`` RGB tensor (a copy: the
    received buffer goes back to ZeroMQ)."""
    pixels = np.frombuffer(payload, dtype=np.uint8).reshape(description.shape)
    if description.format == "nv12":
        return nv12_to_rgb(torch.from_numpy(pixels.copy()))
    if description.format == "bgr24":
        pixels = pixels[:, :, ::-1]
    elif description.format == "rgba":
        pixels = pixels[:, :, :3]
    elif description.format == "gray8":
        pixels = np.repeat(pixels, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(pixels).copy())
