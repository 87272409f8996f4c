"""Sinks: where finished frames go. Each implements the :class:`torchstream.Sink` protocol."""

from torchstream.sinks._callback import CallbackSink
from torchstream.sinks._images import ImageSink, encode_picture
from torchstream.sinks._jsonl import JsonLinesSink
from torchstream.sinks._video import VideoSink

__all__ = ["CallbackSink", "ImageSink", "JsonLinesSink", "VideoSink", "encode_picture"]
