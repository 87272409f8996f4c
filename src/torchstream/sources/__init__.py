"""Sources: where frames come from. Each implements the :class:`torchstream.Source` protocol."""

from __future__ import annotations

import glob
from pathlib import Path

from torchstream.pipeline._channel import Policy
from torchstream.sources._images import IMAGE_SUFFIXES, ImageSource
from torchstream.sources._live import is_live
from torchstream.sources._live_source import LivePolicy, LiveSource
from torchstream.sources._pushed import PushedSource
from torchstream.sources._video import (
    LIVE_SCHEMES,
    DecoderChoice,
    VideoSource,
    default_source_id,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "LIVE_SCHEMES",
    "DecoderChoice",
    "ImageSource",
    "LivePolicy",
    "LiveSource",
    "PushedSource",
    "VideoSource",
    "is_live",
    "open_source",
]


def open_source(
    uri: str | Path,
    *,
    source_id: str | None = None,
    policy: Policy | None = None,
    decoder: DecoderChoice = "auto",
    live: bool | None = None,
) -> VideoSource | ImageSource | LiveSource:
    """The right source for ``uri``: an image directory, glob or file → :class:`ImageSource`;
    a live input (``live=True``, or by default what :func:`is_live` says: a camera device,
    an RTSP/RTMP/UDP/TCP/SRT URL, an HLS playlist) → :class:`LiveSource`, which reconnects
    after outages and never ends by itself; anything else (a video file, an HTTP URL of a
    file) → :class:`VideoSource`. ``policy`` is the runtime's: ``block`` makes a live source
    process every frame (``LiveSource(policy="every")``), ``latest`` keeps the newest."""
    text = str(uri)
    path = Path(text)
    is_url = "://" in text
    if live or (live is None and is_live(text)):
        return LiveSource(
            text, source_id=source_id, decoder=decoder,
            policy="every" if policy == "block" else "latest",
        )
    if not is_url and (
        path.is_dir() or glob.has_magic(text) or path.suffix.lower() in IMAGE_SUFFIXES
    ):
        return ImageSource(text, source_id=source_id, policy=policy or "block")
    return VideoSource(
        text, source_id=source_id or default_source_id(text), policy=policy, decoder=decoder
    )
