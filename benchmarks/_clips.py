"""Test content for the benchmarks, made from real video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["camera_clip"]


def camera_clip(source: Path, target: Path, *, size: tuple[int, int], frames: int) -> Path:
    """``source`` re-encoded as a camera sends it: ``size``, 30 fps, a keyframe every 30
    frames, no B-frames, looped forward and backward to ``frames`` pictures."""
    import av

    width, height = size
    with av.open(str(source)) as src:
        pictures = [
            f.reformat(width=width, height=height, format="yuv420p").to_ndarray()
            for f in src.decode(video=0)
        ]
    period = max(1, 2 * len(pictures) - 2)
    options = {"preset": "veryfast", "crf": "23", "g": "30", "bf": "0", "sc_threshold": "0"}
    with av.open(str(target), "w") as out:
        stream: Any = out.add_stream("libx264", rate=30, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            k = i % period
            picture = pictures[k if k < len(pictures) else period - k]
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return target
