"""Helpers of the HTTP tests: a real uvicorn server on 127.0.0.1 for a test app, and the stages
the tests use."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch

pytest.importorskip("fastapi", reason="pip install 'torchstream[http]'")
import httpx
import uvicorn

from torchstream.frame import Frame
from torchstream.pipeline import BatchPolicy
from torchstream.sinks._images import encode_picture


@contextlib.contextmanager
def running(app: Any, *, ready: bool = True, timeout_seconds: float = 30.0) -> Iterator[str]:
    """Serve ``app`` on a free port in a thread; yields its base URL (after /readyz says
    ready, when ``ready``)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False,
                            timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test/uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_seconds
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in time"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    try:
        if ready:
            wait_ready(url, timeout_seconds)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "uvicorn did not stop"


def wait_ready(url: str, timeout_seconds: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while httpx.get(f"{url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.02)


def picture(width: int = 64, height: int = 48, value: int = 100) -> torch.Tensor:
    rgb = torch.full((height, width, 3), value, dtype=torch.uint8)
    rgb[: height // 2, :, 0] = 255
    return rgb


def jpeg(width: int = 64, height: int = 48, value: int = 100) -> bytes:
    return encode_picture(picture(width, height, value), "jpg")


def png(width: int = 64, height: int = 48, value: int = 100) -> bytes:
    return encode_picture(picture(width, height, value), "png")


class Measure:
    """Adds the picture's mean and size, one object, and the frame's place in its session."""

    name = "measure"
    batch_policy = BatchPolicy(max_size=8, max_wait_seconds=0.002)

    def on_session_start(self, session: Any) -> None:
        session.state[self.name] = 0

    def process(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            surface = frame.require_surface(self.name)
            frame.attributes["mean"] = round(float(surface.float().mean()), 3)
            frame.attributes["batch"] = len(frames)
            if frame.session is not None:
                frame.session.state[self.name] += 1
                frame.attributes["in_session"] = frame.session.state[self.name]
            frame.add_object(label="thing", confidence=0.5, box=[1, 2, 3, 4])


class Gate:
    """Holds every frame until ``release`` (for in-flight, deadline and drain tests);
    frames of width 17 fail."""

    name = "gate"

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = threading.Semaphore(0)
        self.started = 0

    def release(self) -> None:
        self.opened.set()

    def process(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            if frame.source_id == "_warmup":  # the server's own warm-up frame passes
                continue
            self.started += 1
            self.entered.release()
            if frame.width == 17:
                raise ValueError("width 17 is not allowed here")
            assert self.opened.wait(60), "the test never opened the gate"


class Slow:
    """Takes ``seconds`` per batch of up to ``size`` frames."""

    name = "slow"

    def __init__(self, seconds: float, size: int) -> None:
        self.seconds = seconds
        self.batch_policy = BatchPolicy(max_size=size, max_wait_seconds=0.001)

    def process(self, frames: Sequence[Frame]) -> None:
        time.sleep(self.seconds)
