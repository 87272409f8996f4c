"""Test helpers shipped with torchstream: synthetic sources and videos with known content, a
toy detector that finds them exactly, real RTSP servers (GStreamer's, and a silent one) to
test live inputs against, real NATS servers (one, or a cluster of three) and a TCP proxy that
black-holes connections. Use them to test your own stages, sinks and sources.

>>> from torchstream.testing import SyntheticVideo
>>> video = SyntheticVideo(width=320, height=240)
>>> video.boxes(0)["red"]
[10.0, 20.0, 50.0, 50.0]
"""

from __future__ import annotations

import time
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from torchstream.frame import Frame
from torchstream.pipeline._batcher import BatchPolicy
from torchstream.pipeline._channel import Policy
from torchstream.pipeline._model_stage import Crop, ModelStage

__all__ = [
    "COLOURS",
    "RTSP_SERVER_PACKAGES",
    "ConformanceError",
    "MovingRect",
    "NatsCluster",
    "NatsServer",
    "RectangleDetector",
    "RtspTestServer",
    "SilentTcpServer",
    "SyntheticSource",
    "SyntheticVideo",
    "TcpProxy",
    "check_sink",
    "check_source",
    "loop_clip",
    "nats_server_missing",
    "rtsp_server_missing",
    "write_video",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
}
"""Pure colours of the synthetic rectangles; the background is grey (96, 96, 96)."""

_BACKGROUND = 96


@dataclass(frozen=True)
class MovingRect:
    """A solid rectangle of one of :data:`COLOURS`, moving ``velocity`` pixels per frame and
    bouncing inside the picture. Positions are integers, so boxes are exact."""

    label: str
    x: int
    y: int
    width: int
    height: int
    velocity: tuple[int, int] = (0, 0)

    def box(self, seq: int, frame_width: int, frame_height: int) -> list[float]:
        x = _bounce(self.x + self.velocity[0] * seq, frame_width - self.width)
        y = _bounce(self.y + self.velocity[1] * seq, frame_height - self.height)
        return [float(x), float(y), float(x + self.width), float(y + self.height)]


def _bounce(position: int, limit: int) -> int:
    if limit <= 0:
        return 0
    period = 2 * limit
    p = position % period
    return p if p <= limit else period - p


def _default_rects() -> tuple[MovingRect, ...]:
    return (
        # Separate horizontal bands: the rectangles never overlap, so every box stays exact.
        MovingRect("red", 10, 20, 40, 30, (3, 0)),
        MovingRect("green", 200, 90, 30, 50, (-2, 0)),
        MovingRect("blue", 120, 170, 60, 20, (5, 0)),
    )


@dataclass(frozen=True)
class SyntheticVideo:
    """Known content: coloured rectangles moving over grey, frame by frame."""

    width: int = 320
    height: int = 240
    rects: tuple[MovingRect, ...] = field(default_factory=_default_rects)
    fps: float = 30.0

    def __post_init__(self) -> None:
        for rect in self.rects:
            if rect.label not in COLOURS:
                raise ValueError(f"rect label must be one of {sorted(COLOURS)}, got {rect.label!r}")
            if rect.width > self.width or rect.height > self.height:
                raise ValueError(f"rect {rect} does not fit in {self.width}x{self.height}")

    def boxes(self, seq: int) -> dict[str, list[float]]:
        return {r.label: r.box(seq, self.width, self.height) for r in self.rects}

    def render(self, seq: int) -> torch.Tensor:
        """The RGB ``uint8 (height, width, 3)`` picture of frame ``seq``."""
        image = torch.full((self.height, self.width, 3), _BACKGROUND, dtype=torch.uint8)
        for rect in self.rects:
            x1, y1, x2, y2 = (int(v) for v in rect.box(seq, self.width, self.height))
            image[y1:y2, x1:x2] = torch.tensor(COLOURS[rect.label], dtype=torch.uint8)
        return image


def write_video(
    path: str | Path,
    video: SyntheticVideo,
    frames: int,
    *,
    codec: str = "ffv1",
    faststart: bool = False,
) -> Path:
    """Encode ``frames`` frames of ``video`` into a real file with PyAV.

    ``ffv1`` (default, in ``.mkv``) is lossless, so decoded pixels equal the rendered ones;
    ``libx264`` gives a realistic, lossy H.264 file (``.mp4``). ``faststart`` puts an MP4's
    index before its data, so a file cut short still opens and plays up to the cut.
    """
    import av

    path = Path(path)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = typing.cast("av.VideoStream", container.add_stream(codec, rate=round(video.fps)))
        stream.width, stream.height = video.width, video.height
        stream.pix_fmt = {"ffv1": "bgr0", "mjpeg": "yuvj420p"}.get(codec, "yuv420p")
        for seq in range(frames):
            picture = av.VideoFrame.from_ndarray(video.render(seq).numpy(), format="rgb24")
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class SyntheticSource:
    """Frames of a :class:`SyntheticVideo` straight from memory: no encoding, no decoding.

    ``interval_seconds`` paces the frames like a live camera (0: as fast as possible).
    ``fail_at`` raises a :class:`RuntimeError` at that frame (a broken input mid-stream).
    """

    def __init__(
        self,
        source_id: str,
        *,
        frames: int,
        video: SyntheticVideo | None = None,
        policy: Policy = "block",
        interval_seconds: float = 0.0,
        fail_at: int | None = None,
    ) -> None:
        self.source_id = source_id
        self.policy: Policy = policy
        self.video = video or SyntheticVideo()
        self._count = frames
        self._interval = interval_seconds
        self._fail_at = fail_at
        self.closed = False

    def open(self) -> None:
        pass

    def frames(self) -> Iterator[Frame]:
        start = time.monotonic()
        for seq in range(self._count):
            if seq == self._fail_at:
                raise RuntimeError(f"synthetic failure at frame {seq}")
            if self._interval:
                delay = start + seq * self._interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            frame = Frame(
                source_id=self.source_id,
                seq=seq,
                pts_seconds=seq / self.video.fps,
                keyframe=seq == 0,
                width=self.video.width,
                height=self.video.height,
                codec="raw",
            )
            frame.surface = self.video.render(seq)
            yield frame

    def close(self) -> None:
        self.closed = True


class _ColourBoxes(torch.nn.Module):
    """Finds the bounding box of each pure colour: a real (if tiny) model on the device.

    Works on uint8 pixels in int16 arithmetic, one colour at a time: a per-pixel model is
    memory-bound, and this keeps its intermediates small.
    """

    def __init__(self, colours: Sequence[tuple[int, int, int]]) -> None:
        super().__init__()
        self.register_buffer("colours", torch.tensor(colours, dtype=torch.int16))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        # batch: (N, 3, H, W) uint8 → (N, K, 5): present, x1, y1, x2, y2
        pixels = batch.to(torch.int16)
        height, width = batch.shape[-2], batch.shape[-1]
        rows_list, cols_list = [], []
        for colour in self.get_buffer("colours"):
            mask = ((pixels - colour.view(1, 3, 1, 1)).abs() < 40).all(dim=1)  # (N, H, W)
            rows_list.append(mask.any(dim=-1))
            cols_list.append(mask.any(dim=-2))
        rows, cols = torch.stack(rows_list, 1), torch.stack(cols_list, 1)  # (N, K, H/W)
        y1 = rows.int().argmax(dim=-1)
        y2 = height - rows.flip(-1).int().argmax(dim=-1)
        x1 = cols.int().argmax(dim=-1)
        x2 = width - cols.flip(-1).int().argmax(dim=-1)
        present = rows.any(dim=-1)
        return torch.stack([present.float(), x1.float(), y1.float(), x2.float(), y2.float()], -1)


class RectangleDetector(ModelStage):
    """A toy detector for :class:`SyntheticVideo`: one object per visible coloured rectangle,
    with its exact box. Frames of different sizes are batched together (padded)."""

    name = "rectangles"

    def __init__(
        self,
        *,
        name: str = "rectangles",
        batch_policy: BatchPolicy | None = None,
        delay_seconds: float = 0.0,
    ) -> None:
        super().__init__(name=name, batch_policy=batch_policy)
        self.labels = list(COLOURS)
        self.delay_seconds = delay_seconds
        self.batch_sizes: list[int] = []

    def load_model(self) -> torch.nn.Module:
        return _ColourBoxes([COLOURS[label] for label in self.labels])

    def preprocess(self, crops: Sequence[Crop]) -> torch.Tensor:
        height = max(c.frame.height for c in crops)
        width = max(c.frame.width for c in crops)
        # Pad with the grey background: it matches no colour.
        batch = torch.full(
            (len(crops), 3, height, width), _BACKGROUND, dtype=torch.uint8, device=self.device
        )
        for row, crop in enumerate(crops):
            surface = crop.frame.surface
            assert surface is not None
            batch[row, :, : crop.frame.height, : crop.frame.width] = surface.to(
                self.device
            ).permute(2, 0, 1)
        return batch

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(int(batch.shape[0]))
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        return super().forward(batch)  # type: ignore[no-any-return]

    def postprocess(self, outputs: torch.Tensor, crops: Sequence[Crop]) -> list[torch.Tensor]:
        return list(outputs[: len(crops)])

    def attach(self, crop: Crop, result: torch.Tensor) -> None:
        for label, row in zip(self.labels, result.tolist(), strict=True):
            if row[0] > 0:
                crop.frame.add_object(label=label, confidence=1.0, box=row[1:])


from torchstream.testing._conformance import (  # noqa: E402 - uses the classes above
    ConformanceError,
    check_sink,
    check_source,
)
from torchstream.testing._nats import (  # noqa: E402 - grouped with the other test servers
    NatsCluster,
    NatsServer,
    nats_server_missing,
)
from torchstream.testing._proxy import TcpProxy  # noqa: E402
from torchstream.testing._rtsp import (  # noqa: E402 - grouped with the other test servers
    RTSP_SERVER_PACKAGES,
    RtspTestServer,
    SilentTcpServer,
    loop_clip,
    rtsp_server_missing,
)
