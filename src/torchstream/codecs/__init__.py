"""Decoders and encoders."""

from torchstream.codecs._encode import VideoEncoder

__all__ = ["VideoEncoder"]
