"""A source fed from outside: encoded video packets, encoded images or raw pictures pushed by
another thread (a module's socket reader, the client SDK), decoded on the source's thread or
on a pipeline's shared source threads."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import torch

from torchstream._errors import ClosedResourceError, OverloadedError, SourceError
from torchstream.codecs._nvdec import NvdecDecoder, nvdec_available
from torchstream.codecs._nvjpeg import NvjpegDecoder, jpeg_size, nvjpeg_available
from torchstream.codecs._pyav import ImageDecoder, PyAVPacketDecoder
from torchstream.frame import Frame
from torchstream.pipeline._channel import Policy
from torchstream.sources._video import DecoderChoice

__all__ = ["PushedSource", "decode_threads"]

log = logging.getLogger(__name__)


def decode_threads(device: torch.device | str) -> int:
    """How many shared threads decode the pushed sources of a module, NATS worker or HTTP
    back end on ``device`` (``Pipeline(shared_source_threads=)``).

    CPU: one per core, 2 to 16 (decoding is CPU work; more threads only contend for the
    GIL). CUDA: 32, since an NVDEC call waits on the hardware without using the CPU and
    more sessions at once keep its engines busy: 32 pushed 1080p cameras into YOLOP on an
    H100 ran at 788 frames/s on 16 shared threads, 890-974 on 32, 928-975 on a thread each
    (``benchmarks/pushed.py``).
    """
    if torch.device(device).type == "cuda":
        return 32
    return max(2, min(16, os.cpu_count() or 2))


_IMAGE_BATCH = 16
"""Queued JPEGs decoded together on the GPU."""
_KEEP_ERRORS = 100
"""Errors of skipped images a source keeps (the newest)."""


@dataclass
class _Pushed:
    kind: Literal["packet", "image", "raw"]
    data: Any  # bytes-like for packets and images, a uint8 (H, W, 3) tensor for raw
    pts: int | float | None = None
    keyframe: bool = False
    codec: str = ""
    time_base: float | None = None
    extradata: bytes | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    traceparent: str | None = None
    seq: int | None = None
    original: Any = None
    deadline: float | None = None


class PushedSource:
    """Frames of one stream whose data arrives from elsewhere: the owner pushes it, the
    pipeline's thread for this source decodes it and makes frames (or one of its shared
    source threads, in a pipeline made with ``shared_source_threads``: see
    :class:`~torchstream._types.PumpedSource`).

    - :meth:`push_packet`: an encoded video packet (``codec`` is FFmpeg's name; H.264/HEVC
      in Annex B, as MPEG-TS, RTSP and torchstream's wire carry them), decoded with NVDEC
      when the pipeline is on CUDA and NVDEC supports the codec, else PyAV (``decoder``
      forces one, as for :class:`VideoSource`). Decoding starts at a keyframe, and starts
      again at a keyframe whose pts goes back (a restarted sender) or whose attributes carry
      ``live.gap_seconds`` (the first after a live input's outage).
    - :meth:`push_image`: an encoded still image (JPEG on the GPU with nvJPEG when possible,
      anything FFmpeg reads otherwise), one frame each.
    - :meth:`push_raw`: a ``uint8 (H, W, 3)`` RGB picture, one frame as it is.

    Every push may carry ``attributes`` (copied onto the frames it produces), a W3C
    ``traceparent`` (the frame's trace continues it) and the sender's ``seq`` (the frame's
    ``seq``; otherwise frames are numbered here), and ``original``: any object the frame
    keeps as ``frame.__dict__["_original"]`` (what it came as, for a sink to pass on), and
    ``deadline_monotonic``: a ``time.monotonic()`` value after which nobody waits for the
    frame's result, so the pipeline drops it (as ``deadline``) instead of computing it.
    Pushes block while ``max_queued`` items wait (backpressure to the sender; nothing is
    dropped here), up to ``timeout`` seconds, then raise
    :class:`~torchstream.OverloadedError`. :meth:`end` finishes the stream after what is
    queued. A corrupt packet fails this source only; a bad image is skipped and recorded in
    ``errors``, as in :class:`ImageSource`, and reported to ``on_error(seq, message)`` (on
    the source's thread; ``seq`` is the pushed one, or the place the image would have had).
    """

    def __init__(
        self,
        source_id: str,
        *,
        policy: Policy = "block",
        max_queued: int = 64,
        decoder: DecoderChoice = "auto",
        max_pixels: int = 8192 * 8192,
        on_error: Callable[[int, str], None] | None = None,
    ) -> None:
        if policy not in ("block", "latest"):
            raise ValueError(f"policy must be 'block' or 'latest', got {policy!r}")
        if decoder not in ("auto", "nvdec", "pyav"):
            raise ValueError(f"decoder must be 'auto', 'nvdec' or 'pyav', got {decoder!r}")
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self.source_id = source_id
        self.policy: Policy = policy
        self.decoder = decoder
        self.device = torch.device("cpu")
        self.errors: list[str] = []
        self._max_queued = max_queued
        self._max_pixels = max_pixels
        self._on_error = on_error
        self._queue: collections.deque[_Pushed] = collections.deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._ended = False
        self._closed = False
        self._finished = False
        self._wake: Callable[[], None] = _nothing
        self._seq = 0
        self._video: NvdecDecoder | PyAVPacketDecoder | None = None
        self._video_key: tuple[str, float | None] | None = None
        self._pending: dict[int | float, _Pushed] = {}  # pts -> push, for frames not out yet
        # Pushes without a pts (an RTSP connection's first packets), in order: pictures
        # without a pts come from them, in decode order.
        self._unstamped: collections.deque[_Pushed] = collections.deque(maxlen=64)
        self._last_pts: int | float | None = None
        self._nvjpeg: NvjpegDecoder | None = None
        self._cpu_images = ImageDecoder(source_id=source_id, max_pixels=max_pixels)

    # -- the owner's side -------------------------------------------------------------

    def push_packet(
        self,
        data: bytes | memoryview,
        *,
        codec: str,
        pts: int | None = None,
        time_base: float | Fraction | None = None,
        keyframe: bool = False,
        extradata: bytes | None = None,
        attributes: dict[str, Any] | None = None,
        traceparent: str | None = None,
        seq: int | None = None,
        original: Any = None,
        deadline_monotonic: float | None = None,
        timeout: float | None = None,
    ) -> None:
        """Queue one encoded video packet (``pts`` in ``time_base`` seconds per unit)."""
        self._push(
            _Pushed(
                "packet", data, pts, keyframe, codec,
                None if time_base is None else float(time_base), extradata,
                dict(attributes or {}), traceparent, seq, original, deadline_monotonic,
            ),
            timeout,
        )

    def push_image(
        self,
        data: bytes | memoryview,
        *,
        pts_seconds: float | None = None,
        attributes: dict[str, Any] | None = None,
        traceparent: str | None = None,
        seq: int | None = None,
        original: Any = None,
        deadline_monotonic: float | None = None,
        timeout: float | None = None,
    ) -> None:
        """Queue one encoded still image: one frame."""
        self._push(
            _Pushed(
                "image", data, pts_seconds, True, attributes=dict(attributes or {}),
                traceparent=traceparent, seq=seq, original=original,
                deadline=deadline_monotonic,
            ),
            timeout,
        )

    def push_raw(
        self,
        pixels: torch.Tensor,
        *,
        pts_seconds: float | None = None,
        attributes: dict[str, Any] | None = None,
        traceparent: str | None = None,
        seq: int | None = None,
        original: Any = None,
        deadline_monotonic: float | None = None,
        timeout: float | None = None,
    ) -> None:
        """Queue one ``uint8 (H, W, 3)`` RGB picture: one frame."""
        if pixels.dtype != torch.uint8 or pixels.dim() != 3 or pixels.shape[2] != 3:
            raise ValueError(
                "raw pixels must be a uint8 (height, width, 3) RGB tensor, got "
                f"{pixels.dtype} of shape {tuple(pixels.shape)}"
            )
        if pixels.shape[0] * pixels.shape[1] > self._max_pixels:
            raise ValueError(
                f"picture of {pixels.shape[1]}x{pixels.shape[0]} exceeds "
                f"max_pixels={self._max_pixels}"
            )
        self._push(
            _Pushed(
                "raw", pixels, pts_seconds, True, attributes=dict(attributes or {}),
                traceparent=traceparent, seq=seq, original=original,
                deadline=deadline_monotonic,
            ),
            timeout,
        )

    def end(self) -> None:
        """No more data: the source ends once what is queued is decoded."""
        with self._changed:
            self._ended = True
            self._changed.notify_all()
        self._wake()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def decoder_used(self) -> str | None:
        """``nvdec`` or ``pyav`` once video packets are being decoded (None before)."""
        if self._video is None:
            return None
        return "nvdec" if isinstance(self._video, NvdecDecoder) else "pyav"

    @property
    def ended(self) -> bool:
        """Whether :meth:`end` or ``close`` was called: no push is accepted any more."""
        return self._ended or self._closed

    def _push(self, item: _Pushed, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                if self._closed or self._ended:
                    raise ClosedResourceError(
                        f"source {self.source_id!r} is {'closed' if self._closed else 'ended'}"
                    )
                if len(self._queue) < self._max_queued:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise OverloadedError(
                        f"source {self.source_id!r}: {self._max_queued} items already queued"
                    )
                self._changed.wait(remaining)
            self._queue.append(item)
            self._changed.notify_all()
        self._wake()

    # -- the pipeline's side ----------------------------------------------------------

    def prepare(self, device: torch.device) -> None:
        """Called by the pipeline before ``open``: the device its stages run on."""
        self.device = device

    def open(self) -> None:
        if self.decoder == "nvdec" and not torch.cuda.is_available():
            raise SourceError(self.source_id, "decoder='nvdec' needs a CUDA device")

    def attach(self, wake: Callable[[], None]) -> None:
        """Called by a pipeline that decodes this source on a shared thread (see
        ``Pipeline(shared_source_threads=)``) before ``open``: ``wake()`` is called after
        every push, :meth:`end` and ``close``, and the pipeline then calls :meth:`pump`."""
        self._wake = wake

    @property
    def finished(self) -> bool:
        """Whether the stream is over: ended or closed, and everything queued decoded."""
        return self._finished

    def pump(self) -> Iterator[Frame]:
        """The frames of what is queued now, without waiting for more.

        Once the source has ended (or is closed) and its queue is drained, this also
        finishes the video decoder's last pictures, frees it and sets :attr:`finished`. A
        decode error (or the caller closing the iterator early) frees the decoder as well
        and ends the stream.
        """
        with self._changed:
            over = self._ended or self._closed
            items = [] if self._closed else list(self._queue)
            self._queue.clear()
            self._changed.notify_all()
        completed = False
        try:
            yield from self._decoded(items)
            if over:
                yield from self._flush_video()
            completed = True
        finally:
            if over or not completed:
                self._release_video()
                self._finished = True

    def frames(self) -> Iterator[Frame]:
        while not self._finished:
            with self._changed:
                while not self._queue and not self._ended and not self._closed:
                    self._changed.wait()
            yield from self.pump()

    def _decoded(self, items: list[_Pushed]) -> Iterator[Frame]:
        # Images decode in GPU batches; everything else in order, one by one.
        start = 0
        while start < len(items):
            if items[start].kind == "image":
                stop = start
                while stop < len(items) and items[stop].kind == "image":
                    stop += 1
                for chunk in range(start, stop, _IMAGE_BATCH):
                    yield from self._images(items[chunk : min(stop, chunk + _IMAGE_BATCH)])
                start = stop
                continue
            item = items[start]
            start += 1
            if item.kind == "raw":
                yield self._frame(item.data.to(self.device), item, None, item.pts, True)
            else:
                yield from self._packet(item)

    def stop(self) -> None:
        """Called by the pipeline from another thread (``remove_source``, ``close``): what
        is queued is discarded and the stream ends, like ``close``."""
        self.close()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._queue.clear()
            self._changed.notify_all()
        self._wake()

    # -- decoding ---------------------------------------------------------------------

    def _frame(
        self,
        rgb: torch.Tensor,
        item: _Pushed | None,
        ready: torch.cuda.Event | None,
        pts: float | None,
        keyframe: bool,
        codec: str = "",
    ) -> Frame:
        seq = item.seq if item is not None and item.seq is not None else self._seq
        frame = Frame(
            source_id=self.source_id,
            seq=seq,
            pts_seconds=pts,
            keyframe=keyframe,
            width=int(rgb.shape[1]),
            height=int(rgb.shape[0]),
            codec=codec or (item.codec if item is not None else ""),
            attributes=dict(item.attributes) if item is not None else {},
        )
        self._seq = seq + 1
        frame.__dict__["_surface"] = rgb
        if ready is not None:
            frame.__dict__["_ready"] = ready
        if item is not None:
            if item.traceparent:
                frame.__dict__["_traceparent"] = item.traceparent
            if item.original is not None:
                frame.__dict__["_original"] = item.original
            if item.deadline is not None:
                frame.__dict__["_deadline"] = item.deadline
        return frame

    def _video_decoder(self, item: _Pushed) -> NvdecDecoder | PyAVPacketDecoder:
        key = (item.codec, item.time_base)
        if self._video is not None and self._video_key == key:
            return self._video
        use_nvdec = self.decoder == "nvdec" or (
            self.decoder == "auto" and nvdec_available(self.device, item.codec)
        )
        uri = f"packets of {self.source_id}"
        if use_nvdec:
            device = self.device if self.device.type == "cuda" else torch.device("cuda")
            self._video = NvdecDecoder(
                item.codec, time_base=item.time_base, device=device,
                source_id=self.source_id, uri=uri,
            )
        else:
            self._video = PyAVPacketDecoder(
                item.codec, time_base=item.time_base, source_id=self.source_id, uri=uri,
                extradata=item.extradata, max_pixels=self._max_pixels,
            )
        self._video_key = key
        return self._video

    def _packet(self, item: _Pushed) -> Iterator[Frame]:
        # A keyframe whose pts goes back starts the stream again (a restarted sender), as
        # does one that comes after an outage of a live input (a source adapter marks it
        # with live.gap_seconds and keeps its timestamps increasing).
        restarted = item.keyframe and (
            (item.pts is not None and self._last_pts is not None and item.pts <= self._last_pts)
            or "live.gap_seconds" in item.attributes
        )
        if self._video is not None and (
            restarted or self._video_key != (item.codec, item.time_base)
        ):
            # The stream started again or changed codec or clock: finish the old decoder's
            # pictures, start afresh.
            log.info("source %s: the stream restarted", self.source_id)
            yield from self._flush_video()
            self._release_video()
        if item.pts is not None:
            self._last_pts = item.pts
        decoder = self._video_decoder(item)
        if item.attributes or item.traceparent or item.seq is not None or item.original is not None:
            if item.pts is None:
                self._unstamped.append(item)
            else:
                self._pending[item.pts] = item
                if len(self._pending) > 256:  # pts that never came out (dropped before a key)
                    del self._pending[next(iter(self._pending))]
        pts = None if item.pts is None else int(item.pts)
        yield from self._pictures(
            decoder, lambda: decoder.decode(item.data, pts=pts, keyframe=item.keyframe)
        )

    def _pictures(
        self, decoder: NvdecDecoder | PyAVPacketDecoder, call: Callable[[], list[Any]]
    ) -> Iterator[Frame]:
        """Frames of the pictures ``call`` decodes (NVDEC: on its stream, with its events)."""
        if isinstance(decoder, NvdecDecoder):
            with torch.cuda.stream(decoder.cuda_stream):
                pictures = call()
        else:
            pictures = [(rgb.to(self.device), None, s, k) for rgb, s, k in call()]
        for rgb, ready, seconds, keyframe in pictures:
            yield self._frame(rgb, self._origin(seconds), ready, seconds, keyframe, decoder.codec)

    def _origin(self, seconds: float | None) -> _Pushed | None:
        """The push whose packet produced the picture at ``seconds`` (for its attributes and
        trace), matched by pts (a picture without one: the oldest push without one); None
        when it carried neither."""
        if seconds is None:
            return self._unstamped.popleft() if self._unstamped else None
        if not self._pending or self._video_key is None:
            return None
        time_base = self._video_key[1]
        if not time_base:
            return None
        return self._pending.pop(round(seconds / time_base), None)

    def _flush_video(self) -> Iterator[Frame]:
        decoder = self._video
        if decoder is not None:
            yield from self._pictures(decoder, decoder.flush)

    def _release_video(self) -> None:
        decoder, self._video, self._video_key = self._video, None, None
        self._pending.clear()
        self._unstamped.clear()
        self._last_pts = None
        if isinstance(decoder, NvdecDecoder):
            decoder.close()

    def _images(self, items: list[_Pushed]) -> Iterator[Frame]:
        decoded: list[tuple[torch.Tensor, str] | Exception | None] = [None] * len(items)
        ready: torch.cuda.Event | None = None
        if self.decoder != "pyav" and nvjpeg_available(self.device):
            jpegs = [i for i, item in enumerate(items) if _is_jpeg(item.data)]
            if jpegs:
                if self._nvjpeg is None:
                    self._nvjpeg = NvjpegDecoder(self.device, max_pixels=self._max_pixels)
                pictures = self._nvjpeg.decode([bytes(items[i].data) for i in jpegs])
                for index, picture in zip(jpegs, pictures, strict=True):
                    decoded[index] = (
                        picture if isinstance(picture, Exception) else (picture, "mjpeg")
                    )
                ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
                ready.record()
        for index, item in enumerate(items):
            result = decoded[index]
            if result is None:
                try:
                    rgb, codec = self._cpu_images.decode(item.data)
                    result = (rgb.to(self.device), codec)
                except SourceError as exc:
                    result = exc
            if isinstance(result, Exception):
                message = f"image {self._seq_hint(item)} of {self.source_id}: {result}"
                log.warning("%s", message)
                self.errors.append(message)
                if len(self.errors) > _KEEP_ERRORS:  # a long-lived source: the newest only
                    del self.errors[0]
                place = item.seq if item.seq is not None else self._seq
                self._seq = place + 1  # the skipped image keeps its place
                if self._on_error is not None:
                    self._on_error(place, message)
                continue
            rgb, codec = result
            yield self._frame(
                rgb, item, ready if rgb.is_cuda else None,
                None if item.pts is None else float(item.pts), True, codec,
            )

    def _seq_hint(self, item: _Pushed) -> str:
        return f"#{self._seq}" + (f" ({item.attributes})" if item.attributes else "")

    def __repr__(self) -> str:
        return f"PushedSource({self.source_id!r}, queued={len(self._queue)})"


def _nothing() -> None:
    pass


def _is_jpeg(data: Any) -> bool:
    with contextlib.suppress(ValueError):
        jpeg_size(data)
        return True
    return False
