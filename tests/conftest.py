from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from torchstream.testing import SyntheticVideo, write_video


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
