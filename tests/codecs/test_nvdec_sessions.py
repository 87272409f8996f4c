"""NVDEC sessions reused across sources: the pool's rules (here, with stand-in sessions) and
reused sessions decoding exactly what new ones decode (on the GPU)."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import torch

from torchstream import Frame, Pipeline, SourceError
from torchstream.codecs._nvdec_sessions import (
    NvdecSessions,
    SessionStatistics,
    _Session,
    nvdec_sessions,
)
from torchstream.sinks import CallbackSink
from torchstream.sources import VideoSource
from torchstream.testing import MovingRect, SyntheticVideo

KEY = (0, "h264", 640, 360, "yuv420p", "digest")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def session(key: Any = KEY) -> _Session:
    return _Session(decoder=object(), cuda_stream=None, key=key)


def test_a_given_session_serves_the_next_source_with_the_same_key() -> None:
    pool = NvdecSessions()
    first, reused = pool.open(KEY, session)
    assert not reused
    pool.give(first)
    again, reused = pool.open(KEY, session)
    assert reused and again is first and again.decoder is not None
    other, reused = pool.open((0, "h264", 1280, 720, "yuv420p", "digest"), session)
    assert not reused and other is not first
    assert pool.statistics() == SessionStatistics(created=2, reused=1, destroyed=0, idle=0)


def test_sessions_without_a_key_are_never_kept() -> None:
    pool = NvdecSessions()
    unknown, _ = pool.open(None, lambda: session(None))
    pool.give(unknown)
    assert unknown.decoder is None
    stats = pool.statistics()
    assert (stats.idle, stats.destroyed) == (0, 1)


def test_at_most_max_idle_are_kept_oldest_destroyed_first() -> None:
    pool = NvdecSessions(max_idle=2)
    sessions = [session() for _ in range(3)]
    for s in sessions:
        pool.give(s)
    assert sessions[0].decoder is None
    assert all(s.decoder is not None for s in sessions[1:])
    assert pool.statistics().idle == 2
    taken, _ = pool.open(KEY, session)
    assert taken is sessions[2]  # the one given back last


def test_sessions_idle_too_long_are_destroyed_at_the_next_open() -> None:
    clock = Clock()
    pool = NvdecSessions(idle_seconds=30.0, clock=clock)
    old = session()
    pool.give(old)
    clock.now += 31.0
    fresh, reused = pool.open(KEY, session)
    assert not reused and fresh is not old and old.decoder is None
    assert pool.statistics().destroyed == 1


def test_clear_destroys_every_idle_session() -> None:
    pool = NvdecSessions()
    kept = [session() for _ in range(3)]
    for s in kept:
        pool.give(s)
    assert pool.clear() == 3
    assert all(s.decoder is None for s in kept)
    assert pool.statistics().idle == 0


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_idle"):
        NvdecSessions(max_idle=-1)
    with pytest.raises(ValueError, match="idle_seconds"):
        NvdecSessions(idle_seconds=-1.0)


# ---- on the GPU -----------------------------------------------------------------------------

VIDEO = SyntheticVideo(
    width=640,
    height=360,
    rects=(
        MovingRect("red", 10, 40, 80, 60, (6, 0)),
        MovingRect("blue", 200, 280, 120, 40, (8, 0)),
    ),
)
OTHER = SyntheticVideo(
    width=640,
    height=360,
    rects=(MovingRect("green", 300, 100, 60, 90, (-5, 2)),),
)


def encode(
    path: Path,
    frames: int,
    options: dict[str, str],
    *,
    video: SyntheticVideo = VIDEO,
    size: tuple[int, int] = (640, 360),
) -> Path:
    """H.264 of ``video`` with the encoder's ``options`` (reference frames, B-frames, GOP);
    the MP4's index first, so that a cut file still opens."""
    import av

    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = typing.cast(
            "av.VideoStream", container.add_stream("libx264", rate=30, options=options)
        )
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for seq in range(frames):
            picture = av.VideoFrame.from_ndarray(video.render(seq).numpy(), format="rgb24")
            if size != (640, 360):
                picture = picture.reformat(width=size[0], height=size[1])
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


SIMPLE = {"bf": "0", "refs": "1", "g": "15"}
"""A camera's stream: no B-frames, one reference picture."""
DEEP = {"bf": "3", "refs": "6", "g": "60", "preset": "slow"}
"""An encoder's deeper settings: B-frames and six reference pictures (a larger DPB)."""


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sessions")
    return {
        "simple": encode(folder / "simple.mp4", 40, SIMPLE),
        "deep": encode(folder / "deep.mp4", 50, DEEP),
        "deep-other": encode(folder / "deep-other.mp4", 45, DEEP, video=OTHER),
        "small": encode(folder / "small.mp4", 30, SIMPLE, size=(320, 180)),
    }


def decode(path: Path, *, stop_after: int | None = None) -> tuple[list[torch.Tensor], bool]:
    """Every picture of ``path`` (copied to the host) and whether the source started on a
    reused session."""
    source = VideoSource(path, decoder="nvdec")
    source.prepare(torch.device("cuda"))
    source.open()
    assert source._nvdec is not None
    reused = source._nvdec.reused_session
    pictures = []
    try:
        for frame in source.frames():
            frame.__dict__["_ready"].synchronize()
            assert frame.surface is not None
            pictures.append(frame.surface.cpu())
            if stop_after is not None and len(pictures) == stop_after:
                break
    finally:
        source.close()  # as the pipeline does, whatever happened
    return pictures, reused


@pytest.mark.gpu
def test_a_reused_session_decodes_exactly_what_a_new_one_does(clips: dict[str, Path]) -> None:
    nvdec_sessions().clear()
    fresh, reused = decode(clips["deep-other"])
    assert not reused and len(fresh) == 45
    nvdec_sessions().clear()
    decode(clips["deep"])  # a new session, given back at its end
    assert nvdec_sessions().statistics().idle == 1
    again, reused = decode(clips["deep-other"])  # other pictures, same parameter sets
    assert reused
    assert len(again) == len(fresh)
    for a, b in zip(again, fresh, strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_other_parameter_sets_get_their_own_session(clips: dict[str, Path]) -> None:
    # Measured: the simple stream's session decodes the deep one (more reference pictures)
    # into different pictures. So it is not offered.
    nvdec_sessions().clear()
    fresh, _ = decode(clips["deep"])
    nvdec_sessions().clear()
    decode(clips["simple"])
    again, reused = decode(clips["deep"])
    assert not reused
    assert all(torch.equal(a, b) for a, b in zip(again, fresh, strict=True))
    assert nvdec_sessions().statistics().idle == 2


@pytest.mark.gpu
def test_a_different_picture_size_gets_its_own_session(clips: dict[str, Path]) -> None:
    nvdec_sessions().clear()
    decode(clips["simple"])
    small, reused = decode(clips["small"])
    assert not reused
    assert len(small) == 30 and small[0].shape == (180, 320, 3)
    assert nvdec_sessions().statistics().idle == 2  # one for each size


@pytest.mark.gpu
def test_a_source_stopped_mid_stream_destroys_its_session(clips: dict[str, Path]) -> None:
    nvdec_sessions().clear()
    before = nvdec_sessions().statistics()
    pictures, _ = decode(clips["deep"], stop_after=5)
    assert len(pictures) == 5
    after = nvdec_sessions().statistics()
    assert after.idle == 0 and after.destroyed == before.destroyed + 1


@pytest.mark.gpu
def test_a_failed_stream_destroys_its_session(clips: dict[str, Path], tmp_path: Path) -> None:
    nvdec_sessions().clear()
    data = clips["deep"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    before = nvdec_sessions().statistics()
    with pytest.raises(SourceError, match=r"cut\.mp4"):
        decode(cut)
    after = nvdec_sessions().statistics()
    assert after.idle == 0 and after.destroyed == before.destroyed + 1


@pytest.mark.gpu
def test_sources_that_come_and_go_share_sessions_and_the_pipeline_frees_them(
    clips: dict[str, Path],
) -> None:
    nvdec_sessions().clear()
    before = nvdec_sessions().statistics()
    frames: list[Frame] = []
    with Pipeline([], [CallbackSink(frames.append)], device="cuda") as pipeline:
        for round_ in range(3):
            for i in range(4):
                pipeline.add_source(VideoSource(clips["simple"], source_id=f"r{round_}c{i}"))
            pipeline.wait()
        during = nvdec_sessions().statistics()
    after = nvdec_sessions().statistics()
    assert len(frames) == 3 * 4 * 40
    assert during.created - before.created <= 4  # the first round's four, then reused
    assert during.reused - before.reused >= 8
    assert after.idle == 0
