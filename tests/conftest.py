from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from torchstream.testing import (
    RTSP_SERVER_PACKAGES,
    RtspTestServer,
    SyntheticVideo,
    rtsp_server_missing,
    write_video,
)


@pytest.fixture(autouse=True)
def _quiet_expected_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    # Failing inputs are logged as warnings on purpose; keep them in caplog, off the console.
    caplog.set_level(logging.WARNING, logger="torchstream")
    # The CLI configures logging (as a program does); undo it after in-process CLI tests.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def video() -> SyntheticVideo:
    return SyntheticVideo()


@pytest.fixture
def lossless_file(tmp_path: Path, video: SyntheticVideo) -> Path:
    """30 frames of the synthetic video, lossless, in a real Matroska file."""
    return write_video(tmp_path / "rects.mkv", video, 30)


@pytest.fixture
def h264_file(tmp_path: Path, video: SyntheticVideo) -> Path:
    return write_video(tmp_path / "rects.mp4", video, 30, codec="libx264")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="needs a CUDA device (run scripts/gpu-check.sh on a GPU machine)"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(
    params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)],
)
def device(request: pytest.FixtureRequest) -> str:
    """Runs a test on the CPU and, on a GPU machine, on CUDA (skipped elsewhere)."""
    return str(request.param)


# GStreamer's RTSP server (installed here when running as root, as CI does), for the tests of
# live inputs (tests/sources) and of the live source adapter (tests/transport).


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


@pytest.fixture
def own_rtsp_server(rtsp_available: None) -> Iterator[RtspTestServer]:
    """A server of the test's own, to kill, restart, pause: /h264, /hevc."""
    with RtspTestServer() as server:
        yield server
