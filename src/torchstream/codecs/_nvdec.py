"""GPU decoding with NVDEC (PyNvVideoCodec): packets demuxed by PyAV, RGB surfaces in device
memory, handed to torch through DLPack; decoder sessions reused across sources."""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from torchstream._errors import MissingDependencyError, SourceError
from torchstream.codecs._nvdec_sessions import _SESSIONS, _Session, _SessionKey
from torchstream.codecs._pyav import annexb_filter

__all__ = ["NVDEC_CODECS", "NvdecDecoder", "nvdec_available"]

log = logging.getLogger(__name__)

_INTRA_ONLY = frozenset({"mjpeg"})
"""Codecs without reference pictures: their sessions are reused without parameter sets."""

NVDEC_CODECS = {
    "h264": "H264",
    "hevc": "HEVC",
    "mjpeg": "JPEG",
    "av1": "AV1",
    "vp9": "VP9",
    "vp8": "VP8",
    "mpeg4": "MPEG4",
    "mpeg2video": "MPEG2",
    "mpeg1video": "MPEG1",
}
"""FFmpeg codec name → NVDEC codec: what :class:`NvdecDecoder` accepts."""

_Decoded = tuple[torch.Tensor, torch.cuda.Event, float | None, bool]
"""One decoded picture: RGB surface, its ready event, pts in seconds, keyframe flag."""


@functools.cache
def _nvc() -> Any:
    try:
        import PyNvVideoCodec
    except ImportError as exc:
        raise MissingDependencyError("PyNvVideoCodec", "gpu") from exc
    return PyNvVideoCodec


@functools.cache
def _memcpy_async() -> Any:
    """``cudaMemcpyAsync`` of the CUDA runtime torch has loaded (found by its soname), or None.

    One ctypes call per picture instead of a DLPack hand-off and a torch copy: the hand-off
    alone cost about 13 % of the GIL at 32 streams (it builds Python stream objects).
    """
    import ctypes

    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"):
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        function = library.cudaMemcpyAsync
        function.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p
        ]
        function.restype = ctypes.c_int
        return function
    return None


_DEVICE_TO_DEVICE = 3  # cudaMemcpyKind


def nvdec_available(device: torch.device, codec: str) -> bool:
    """Whether NVDEC on ``device`` can decode ``codec`` (an FFmpeg codec name)."""
    if device.type != "cuda" or codec not in NVDEC_CODECS or not torch.cuda.is_available():
        return False
    return _decoder_supports(device.index or 0, codec)


@functools.cache
def _decoder_supports(gpu: int, codec: str) -> bool:
    """The driver's answer, asked once per device and codec (every source used to ask)."""
    try:
        nvc = _nvc()
    except MissingDependencyError:
        return False
    try:
        caps = nvc.GetDecoderCaps(gpuid=gpu, codec=getattr(nvc.cudaVideoCodec, NVDEC_CODECS[codec]))
    except Exception:  # no driver support for this codec: fall back to the CPU
        return False
    return bool(caps.get("supported", 0))


class NvdecDecoder:
    """Decodes the packets of one video stream on the GPU into ``uint8 (H, W, 3)`` RGB tensors.

    NVDEC converts to RGB into one output buffer that it reuses at the next decode call, so
    each picture is copied out (device to device, on this decoder's own CUDA stream) into a
    tensor from torch's caching allocator: measured on an H200, the copy costs about 1 % of
    the decode rate at 32 streams, and frames then live as long as any stage holds them. Each
    yielded tensor comes with a CUDA event recorded after its copy: consumers on other streams
    wait on it instead of synchronising the device.

    Packets before the first keyframe are skipped (a session starts at a keyframe). A decode
    failure raises :class:`SourceError` naming the input.

    With ``picture`` (the stream's width, height and pixel format, when the container or
    connection tells them) the decoder session comes from the process's pool
    (:func:`~torchstream.codecs.nvdec_sessions`) when one fits, and goes back there at
    :meth:`close` if the stream was decoded to its end.
    """

    def __init__(
        self,
        codec: str,
        *,
        time_base: float | None,
        device: torch.device,
        source_id: str,
        uri: str,
        stream: Any = None,
        picture: tuple[int, int, str] | None = None,
        extradata: bytes | None = None,
    ) -> None:
        """``codec``: FFmpeg's codec name; ``time_base``: seconds per pts unit. ``stream``: the
        PyAV stream the packets come from, when they are demuxed by PyAV from a container
        (MP4/MKV H.264/HEVC packets are converted to Annex B); packets given to
        :meth:`decode` must already be Annex B (what MPEG-TS, RTSP and our wire carry).
        ``picture``: ``(width, height, pixel_format)`` of the stream (FFmpeg's pixel format
        name), and ``extradata``: the codec's out-of-band parameter sets (an MP4's avcC/hvcC),
        when known: a session is reused only between streams that agree on all of them (for
        codecs with reference pictures, parameter sets must be known)."""
        nvc = _nvc()
        self.source_id = source_id
        self.uri = uri
        self.device = device
        self.codec = codec
        if codec not in NVDEC_CODECS:
            raise SourceError(source_id, f"NVDEC cannot decode {codec!r} ({uri})")
        self._time_base = time_base
        self._filter: Any = annexb_filter(stream) if stream is not None else None
        key: _SessionKey | None = None
        if picture is not None and all(picture) and (extradata or codec in _INTRA_ONLY):
            digest = hashlib.sha1(extradata or b"").hexdigest()
            key = (device.index or 0, codec, int(picture[0]), int(picture[1]), picture[2], digest)

        def create() -> _Session:
            cuda_stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
            try:
                decoder = nvc.CreateDecoder(
                    gpuid=device.index or 0,
                    codec=getattr(nvc.cudaVideoCodec, NVDEC_CODECS[codec]),
                    cudastream=cuda_stream.cuda_stream,
                    usedevicememory=True,
                    outputColorType=nvc.OutputColorType.RGB,
                )
            except Exception as exc:
                raise SourceError(source_id, f"cannot start NVDEC for {uri}: {exc}") from exc
            return _Session(decoder, cuda_stream, key)

        self._session: _Session | None
        self._session, self.reused_session = _SESSIONS.open(key, create)
        self.cuda_stream = self._session.cuda_stream
        self._decoder = self._session.decoder
        self._expected_shape = (key[3], key[2]) if key is not None else None
        self._clean = False  # the stream was decoded to its end without an error
        self._failed = False
        self._packet_type = nvc.PacketData
        self._memcpy = _memcpy_async()
        self._seen_keyframe = False
        self._keyframe_pts: set[int] = set()

    def frames(self, container: Any, *, path: str | None = None) -> Iterator[_Decoded]:
        """Decode every packet of ``container``'s first video stream (opened by PyAV).

        With ``path`` (a local file), PyNvVideoCodec's demuxer reads the packets in C++ and
        converts them to Annex B itself: per packet it holds the GIL for far less than a PyAV
        packet plus a bitstream-filter pass, which is what bounds many streams in one process.
        Without it (URLs, live streams) PyAV demuxes.

        While it runs, the calling thread's current CUDA stream is this decoder's stream (the
        thread exists to decode: this saves a stream switch per picture).
        """
        previous = torch.cuda.current_stream(self.device)
        torch.cuda.set_stream(self.cuda_stream)
        try:
            if path is not None:
                expected = int(container.streams.video[0].frames or 0)
                yield from self._native_frames(path, expected)
            else:
                yield from self._pyav_frames(container)
        finally:
            torch.cuda.set_stream(previous)

    def _pyav_frames(self, container: Any) -> Iterator[_Decoded]:
        import av

        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                if not self._seen_keyframe:
                    if not packet.is_keyframe:
                        continue
                    self._seen_keyframe = True
                if self._filter is None:
                    yield from self._feed_pyav(packet)
                else:
                    for item in self._filter.filter(packet):
                        yield from self._feed_pyav(item)
        except av.error.FFmpegError as exc:
            raise SourceError(
                self.source_id, f"corrupt or truncated data in {self.uri}: {exc}"
            ) from exc
        if self._filter is not None:
            for item in self._filter.filter(None):
                yield from self._feed_pyav(item)
        yield from self._flush()

    def _native_frames(self, path: str, expected: int) -> Iterator[_Decoded]:
        """Packets from PyNvVideoCodec's demuxer. ``expected``: the packet count the
        container's index announces (0: unknown); fewer means the file is truncated (this
        demuxer ends quietly where PyAV's raises)."""
        try:
            demuxer = _nvc().CreateDemuxer(filename=path)
        except Exception as exc:
            raise SourceError(self.source_id, f"cannot demux {self.uri}: {exc}") from exc
        packets = iter(demuxer)
        seen = 0
        while True:
            try:
                data = next(packets, None)
            except Exception as exc:
                raise SourceError(
                    self.source_id, f"corrupt or truncated data in {self.uri}: {exc}"
                ) from exc
            if data is None:
                break
            if not data.bsl:
                continue
            seen += 1
            if data.key:
                if not self._seen_keyframe:
                    self._seen_keyframe = True
                self._keyframe_pts.add(data.pts)
            elif not self._seen_keyframe:
                continue
            yield from self._feed(data)
        if seen < expected:
            raise SourceError(
                self.source_id,
                f"truncated data in {self.uri}: {seen} of {expected} packets could be read",
            )
        yield from self._flush()

    def decode(
        self, data: bytes | memoryview, *, pts: int | None = None, keyframe: bool = False
    ) -> list[_Decoded]:
        """Decode one Annex B packet given as bytes (a packet received from elsewhere).

        Run with this decoder's stream current (``torch.cuda.stream(decoder.cuda_stream)``).
        Packets before the first keyframe are skipped. The bytes are read during the call
        only."""
        if not self._seen_keyframe:
            if not keyframe:
                return []
            self._seen_keyframe = True
        view = np.frombuffer(data, dtype=np.uint8)  # zero-copy, alive during Decode
        return self._feed(self._packet(view.ctypes.data, view.size, pts, keyframe))

    def flush(self) -> list[_Decoded]:
        """The pictures still inside the decoder, at the end of a stream."""
        return self._flush()

    def _feed_pyav(self, packet: Any) -> list[_Decoded]:
        # The PyAV packet stays referenced during Decode.
        return self._feed(
            self._packet(packet.buffer_ptr, packet.buffer_size, packet.pts, packet.is_keyframe)
        )

    def _packet(self, address: int, size: int, pts: int | None, keyframe: bool) -> Any:
        """A ``PacketData`` for the ``size`` bytes at ``address``; a keyframe's pts is
        remembered so that its picture is flagged as one."""
        data = self._packet_type()
        data.bsl_data = address
        data.bsl = size
        if pts is not None:
            data.pts = pts
            if keyframe:
                self._keyframe_pts.add(pts)
        return data

    def _flush(self) -> list[_Decoded]:
        data = self._packet_type()
        data.bsl, data.bsl_data = 0, 0
        pictures = self._feed(data)
        self._clean = not self._failed  # every picture is out: the session can serve another
        return pictures

    def _feed(self, data: Any) -> list[_Decoded]:
        """Decode one packet (``PacketData``); return its pictures as ``(rgb, ready_event,
        pts_seconds, keyframe)``. Runs on this decoder's stream."""
        if self._decoder is None:
            raise SourceError(self.source_id, f"NVDEC decoder of {self.uri} is closed")
        self._clean = False
        try:
            decoded = self._decoder.Decode(data)
        except Exception as exc:
            self._failed = True
            raise SourceError(self.source_id, f"NVDEC failed on {self.uri}: {exc}") from exc
        if decoded and self._expected_shape is not None:
            self._check_shape(decoded[0])
        out: list[_Decoded] = []
        for picture in decoded:
            # NVDEC reuses its output buffer at the next Decode: copy the picture out, on the
            # decoder's stream (its colour conversion ran there, so the copy comes after it).
            rgb = self._copy_out(picture)
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record(self.cuda_stream)  # (no argument: a current-stream lookup, costly)
            pts = picture.getPTS()
            keyframe = pts in self._keyframe_pts
            if keyframe:
                self._keyframe_pts.discard(pts)
            seconds = pts * self._time_base if self._time_base is not None else None
            out.append((rgb, ready, seconds, keyframe))
        return out

    def _check_shape(self, picture: Any) -> None:
        """Whether the first picture has the size the stream announced (checked once). A
        reused session is only right for pictures of the size it was made for: it fails the
        source. A new session that disagrees is not reused later."""
        expected, self._expected_shape = self._expected_shape, None
        if expected is None or tuple(picture.shape[:2]) == expected:
            return
        if not self.reused_session:
            if self._session is not None:
                self._session.key = None
            return
        self._failed = True
        raise SourceError(
            self.source_id,
            f"NVDEC decoded {picture.shape[1]}x{picture.shape[0]} pictures from {self.uri}, "
            f"whose stream announced {expected[1]}x{expected[0]}",
        )

    def close(self) -> None:
        """Give the session back to the pool if the stream was decoded to its end, else
        destroy it now rather than whenever the last reference goes. Idempotent.

        Measured on an H200: destroying a session takes 20-230 ms, mostly with the GIL held
        (a pure-Python thread ran at 15-30 % of its speed meanwhile), whether or not its stream
        was synchronised first; so a source that ends briefly slows the others.
        """
        session, self._session, self._decoder = self._session, None, None
        if session is None:
            return
        if self._clean:
            _SESSIONS.give(session)
        else:
            _SESSIONS.destroy(session)

    def _copy_out(self, picture: Any) -> torch.Tensor:
        shape = tuple(picture.shape)
        contiguous = tuple(picture.strides) == (shape[1] * shape[2], shape[2], 1)
        if self._memcpy is not None and len(shape) == 3 and contiguous:
            rgb = torch.empty(shape, dtype=torch.uint8, device=self.device)
            status = self._memcpy(
                rgb.data_ptr(),
                picture.GetPtrToPlane(0),
                rgb.numel(),
                _DEVICE_TO_DEVICE,
                self.cuda_stream.cuda_stream,
            )
            if status == 0:
                return rgb
            log.warning("cudaMemcpyAsync failed (%d); using DLPack from now on", status)
            self._memcpy = None
        view = torch.utils.dlpack.from_dlpack(picture)
        out = torch.empty_like(view)
        out.copy_(view, non_blocking=True)
        return out
