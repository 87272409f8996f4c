"""A received frame message into a :class:`~torchstream.sources._pushed.PushedSource`: the one
place that maps the wire's payload descriptions to the source's push calls, for the ZeroMQ
module and the NATS worker alike (no socket library imported here)."""

from __future__ import annotations

from typing import Any

from torchstream.sources._pushed import PushedSource
from torchstream.transport._protocol import FrameMessage, ImagePayload, PacketPayload

__all__ = ["push_encoded"]


def push_encoded(
    source: PushedSource, message: FrameMessage, payload: memoryview, **common: Any
) -> bool:
    """Push ``message``'s encoded payload (a video packet or an image) into ``source``, with
    ``common`` (``seq``, ``traceparent``, ``attributes``, ``timeout``, ...) passed through.
    False, pushing nothing, for any other payload (raw pixels: the caller decides). Raises
    what the push raises (``ClosedResourceError``, ``OverloadedError``, ``ValueError``)."""
    description = message.payload
    if isinstance(description, PacketPayload):
        numerator, denominator = description.time_base
        source.push_packet(
            payload,
            codec=description.codec,
            pts=description.pts,
            time_base=numerator / denominator,
            keyframe=message.keyframe,
            extradata=description.extradata,
            **common,
        )
    elif isinstance(description, ImagePayload):
        source.push_image(payload, pts_seconds=message.pts_seconds, **common)
    else:
        return False
    return True
