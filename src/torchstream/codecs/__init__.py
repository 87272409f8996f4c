"""Decoders and encoders."""

from torchstream.codecs._encode import VideoEncoder
from torchstream.codecs._nvdec_sessions import NvdecSessions, SessionStatistics, nvdec_sessions
from torchstream.codecs._pyav import EncodedPacket, decode_image, demux_packets

__all__ = [
    "EncodedPacket",
    "NvdecSessions",
    "SessionStatistics",
    "VideoEncoder",
    "decode_image",
    "demux_packets",
    "nvdec_sessions",
]
