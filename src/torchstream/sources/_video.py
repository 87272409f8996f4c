"""A video source: any file or URL FFmpeg opens, decoded on the CPU with PyAV."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from torchstream._errors import SourceError
from torchstream.codecs._nvdec import NvdecDecoder, nvdec_available
from torchstream.codecs._pyav import PyAVDecoder, open_container
from torchstream.frame import Frame
from torchstream.pipeline._channel import Policy

__all__ = ["DecoderChoice", "VideoSource", "default_source_id"]

DecoderChoice = Literal["auto", "nvdec", "pyav"]
"""``auto``: NVDEC when the pipeline's device is CUDA and NVDEC supports the codec, PyAV on
the CPU otherwise; ``nvdec`` / ``pyav`` force one (``nvdec`` fails the source if it cannot)."""

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "udp://", "tcp://", "srt://")
"""Inputs that are live: they default to the ``latest`` policy (newest frame wins)."""


def default_source_id(uri: str) -> str:
    """The file name for files; host and path (sanitised) for URLs."""
    if "://" in uri and not uri.startswith("file://"):
        rest = uri.split("://", 1)[1].split("?", 1)[0].rsplit("@", 1)[-1]
        return re.sub(r"[^A-Za-z0-9._-]+", "_", rest).strip("_") or "stream"
    return Path(uri.removeprefix("file://")).name


class VideoSource:
    """Frames of one video file or stream, with real pts, in decode order.

    ``source_id`` defaults to the file name. ``policy`` defaults to ``latest`` for live
    schemes (``rtsp://``, ``rtmp://``, ``udp://``, …) and ``block`` otherwise, so a file is
    read exactly once with nothing dropped. ``options`` go to FFmpeg (``{"rtsp_transport":
    "tcp"}``). Errors (missing file, unsupported media, corrupt data, truncation) raise
    :class:`~torchstream.SourceError` naming the input.

    ``decoder`` picks NVDEC or PyAV (see :data:`DecoderChoice`); the pipeline tells the source
    its device through ``prepare(device)`` before opening it. With NVDEC the surfaces are on
    the GPU and each frame carries a CUDA event that consumers wait on; ``decoder_used`` says
    which decoder was chosen once the source is open. ``demuxer="auto"`` lets NVDEC read local
    files with PyNvVideoCodec's own demuxer (less Python per frame, so more streams per
    process); ``"pyav"`` keeps PyAV's demuxer for everything.
    """

    def __init__(
        self,
        uri: str | Path,
        *,
        source_id: str | None = None,
        policy: Policy | None = None,
        options: dict[str, str] | None = None,
        max_pixels: int = 8192 * 8192,
        decoder: DecoderChoice = "auto",
        demuxer: Literal["auto", "pyav"] = "auto",
    ) -> None:
        if decoder not in ("auto", "nvdec", "pyav"):
            raise ValueError(f"decoder must be 'auto', 'nvdec' or 'pyav', got {decoder!r}")
        if demuxer not in ("auto", "pyav"):
            raise ValueError(f"demuxer must be 'auto' or 'pyav', got {demuxer!r}")
        self.demuxer = demuxer
        self.decoder: DecoderChoice = decoder
        self.device = torch.device("cpu")
        self.decoder_used: Literal["nvdec", "pyav"] | None = None
        self.uri = str(uri)
        self.source_id = source_id or default_source_id(self.uri)
        if policy is None:
            policy = "latest" if self.uri.startswith(LIVE_SCHEMES) else "block"
        if policy not in ("block", "latest"):
            raise ValueError(f"policy must be 'block' or 'latest', got {policy!r}")
        self.policy: Policy = policy
        self._options = options
        self._max_pixels = max_pixels
        self._container: Any = None
        self._decoder: PyAVDecoder | None = None
        self._nvdec: NvdecDecoder | None = None

    def prepare(self, device: torch.device) -> None:
        """Called by the pipeline before ``open``: the device its stages run on."""
        self.device = device

    def open(self) -> None:
        self._container = open_container(self.uri, source_id=self.source_id, options=self._options)
        try:
            # PyAVDecoder checks the stream (video present, size limits) for both paths.
            self._decoder = PyAVDecoder(
                self._container, source_id=self.source_id, uri=self.uri, max_pixels=self._max_pixels
            )
            use_nvdec = self.decoder == "nvdec" or (
                self.decoder == "auto" and nvdec_available(self.device, self._decoder.codec)
            )
            if use_nvdec:
                device = self.device if self.device.type == "cuda" else torch.device("cuda")
                if not torch.cuda.is_available():
                    raise SourceError(self.source_id, "decoder='nvdec' needs a CUDA device")
                stream = self._decoder.stream
                ctx = stream.codec_context
                self._nvdec = NvdecDecoder(
                    self._decoder.codec,
                    time_base=float(stream.time_base) if stream.time_base else None,
                    device=device,
                    source_id=self.source_id,
                    uri=self.uri,
                    stream=stream,
                    picture=(ctx.width, ctx.height, ctx.pix_fmt or ""),
                    extradata=ctx.extradata,
                )
            self.decoder_used = "nvdec" if use_nvdec else "pyav"
        except BaseException:
            self.close()
            raise

    def frames(self) -> Iterator[Frame]:
        if self._decoder is None:
            self.open()
        decoder = self._decoder
        assert decoder is not None
        if self._nvdec is not None:
            local = self._local_path() if self.demuxer == "auto" else None
            decoded = self._nvdec.frames(self._container, path=local)
            for seq, (rgb, ready, pts, keyframe) in enumerate(decoded):
                frame = self._frame(seq, rgb, pts, keyframe, decoder.codec)
                frame.__dict__["_ready"] = ready  # decoded on the GPU: consumers wait on it
                yield frame
            return
        for seq, (rgb, pts, keyframe) in enumerate(decoder.frames()):
            yield self._frame(seq, rgb, pts, keyframe, decoder.codec)

    def _local_path(self) -> str | None:
        if "://" in self.uri and not self.uri.startswith("file://"):
            return None
        path = Path(self.uri.removeprefix("file://"))
        return str(path) if path.is_file() else None

    def _frame(
        self, seq: int, rgb: torch.Tensor, pts: float | None, keyframe: bool, codec: str
    ) -> Frame:
        frame = Frame(
            source_id=self.source_id,
            seq=seq,
            pts_seconds=pts,
            keyframe=keyframe,
            width=int(rgb.shape[1]),
            height=int(rgb.shape[0]),
            codec=codec,
        )
        frame.__dict__["_surface"] = rgb  # decoders give (H, W, 3): skip the setter's check
        return frame

    def close(self) -> None:
        container, self._container, self._decoder = self._container, None, None
        nvdec, self._nvdec = self._nvdec, None
        if nvdec is not None:
            nvdec.close()
        if container is not None:
            container.close()

    def __repr__(self) -> str:
        return f"VideoSource({self.uri!r}, source_id={self.source_id!r}, policy={self.policy!r})"
