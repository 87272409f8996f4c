"""Decoders and encoders."""

from torchstream.codecs._encode import VideoEncoder
from torchstream.codecs._pyav import EncodedPacket, decode_image, demux_packets

__all__ = ["EncodedPacket", "VideoEncoder", "decode_image", "demux_packets"]
