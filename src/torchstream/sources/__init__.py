"""Sources: where frames come from. Each implements the :class:`torchstream.Source` protocol."""

from __future__ import annotations

import glob
from pathlib import Path

from torchstream.pipeline._channel import Policy
from torchstream.sources._images import IMAGE_SUFFIXES, ImageSource
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
    "PushedSource",
    "VideoSource",
    "open_source",
]


def open_source(
    uri: str | Path,
    *,
    source_id: str | None = None,
    policy: Policy | None = None,
    decoder: DecoderChoice = "auto",
) -> VideoSource | ImageSource:
    """The right source for ``uri``: an image directory, glob or file → :class:`ImageSource`;
    anything else (video file, URL, device) → :class:`VideoSource`."""
    text = str(uri)
    path = Path(text)
    is_url = "://" in text
    if not is_url and (
        path.is_dir() or glob.has_magic(text) or path.suffix.lower() in IMAGE_SUFFIXES
    ):
        return ImageSource(text, source_id=source_id, policy=policy or "block")
    return VideoSource(
        text, source_id=source_id or default_source_id(text), policy=policy, decoder=decoder
    )
