"""A stand-in pipeline module for the client tests, and small images to send it."""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Literal

import pytest

from torchstream import Frame, MissingDependencyError

with contextlib.suppress(MissingDependencyError):  # no pyzmq: the tests skip before use
    from torchstream.transport import (
        EndOfStream,
        FrameMessage,
        Receiver,
        ResultMessage,
        Sender,
        Shutdown,
    )

TIMEOUT = 10.0  # seconds; only reached when something is broken
_SECRET = "stop-echo"


def encode_image(format: Literal["jpeg", "png"], width: int = 32, height: int = 24) -> bytes:
    """A small real JPEG or PNG file, encoded by FFmpeg."""
    import av
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
    codec = av.CodecContext.create("png" if format == "png" else "mjpeg", "w")
    codec.pix_fmt = "rgb24" if format == "png" else "yuvj420p"
    codec.width, codec.height = width, height
    codec.time_base = Fraction(1, 25)
    frame = frame.reformat(format=codec.pix_fmt)
    return b"".join(bytes(packet) for packet in codec.encode(frame) + codec.encode(None))


@pytest.fixture(scope="session")
def jpeg() -> bytes:
    return encode_image("jpeg")


@pytest.fixture(scope="session")
def png() -> bytes:
    return encode_image("png")


class EchoModule:
    """What a pipeline module does, minus the pipeline, on its own thread: each frame comes
    back as a result (metadata: source id, seq, ``{"bytes": payload size}`` plus the
    attributes sent; content as configured; the frame's traceparent) and each end-of-stream
    as an end-of-stream. Frames arrive on ``router`` or ``pull``, results leave on ``pub``
    (after ``subscriptions`` subscriptions arrived) or ``push``."""

    def __init__(
        self,
        urls: tuple[str, str],
        *,
        input: Literal["router", "pull"],
        output: Literal["pub", "push"],
        content: Literal["none", "original"],
        subscriptions: int,
    ) -> None:
        self.rx = Receiver(f"{input}+bind:{urls[0]}", shutdown_secret=_SECRET)
        self.tx = Sender(f"{output}+bind:{urls[1]}", send_timeout_seconds=TIMEOUT)
        self.source_endpoint = (
            f"{'dealer' if input == 'router' else 'push'}+connect:{self.rx.endpoint.url}"
        )
        self.sink_endpoint = (
            f"{'sub' if output == 'pub' else 'pull'}+connect:{self.tx.endpoint.url}"
        )
        self.content = content
        self.subscriptions = subscriptions
        self.frames = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test/echo-module", daemon=True)

    def start(self) -> EchoModule:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            if self.tx.endpoint.socket_type == "pub" and self.subscriptions:
                self.tx.wait_for_subscribers(self.subscriptions, timeout_seconds=TIMEOUT)
            while True:
                message, payload = self.rx.recv()
                if isinstance(message, Shutdown):
                    return
                if isinstance(message, EndOfStream):
                    self.tx.send(message)
                    continue
                assert isinstance(message, FrameMessage) and payload is not None
                self.frames += 1
                self._answer(message, payload)
        except BaseException as exc:  # the test that owns the module reports it
            self.error = exc

    def _answer(self, message: FrameMessage, payload: memoryview) -> None:
        metadata = message.metadata
        description = message.payload
        width = metadata.width if metadata else getattr(description, "width", 1)
        height = metadata.height if metadata else getattr(description, "height", 1)
        attributes = {"bytes": payload.nbytes, **(metadata.attributes if metadata else {})}
        frame = Frame(
            source_id=message.source_id, seq=message.seq, pts_seconds=message.pts_seconds,
            width=width, height=height, attributes=attributes,
        )
        if self.content == "original":
            result = ResultMessage(
                frame=frame, content="original", payload=description,
                traceparent=message.traceparent,
            )
            self.tx.send(result, payload)
        else:
            self.tx.send(ResultMessage(frame=frame, traceparent=message.traceparent))

    def stop(self) -> None:
        if self._thread.is_alive():
            with Sender(self.source_endpoint) as stopper:
                stopper.send(Shutdown(secret=_SECRET))
        self._thread.join(TIMEOUT)
        self.rx.close()
        self.tx.close()
        assert not self._thread.is_alive(), "the echo module did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture(params=["tcp", "ipc"])
def urls(request: pytest.FixtureRequest) -> Iterator[Callable[[], tuple[str, str]]]:
    """Makes pairs of addresses to bind a module's two sockets to: free loopback ports, or
    Unix sockets in a short temporary directory (their paths are limited to 107 bytes)."""
    if request.param == "tcp":
        yield lambda: ("tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
        return
    with tempfile.TemporaryDirectory(prefix="tsc-") as directory:
        count = iter(range(1000))

        def make() -> tuple[str, str]:
            n = next(count)
            return (f"ipc://{Path(directory)}/in{n}", f"ipc://{Path(directory)}/out{n}")

        yield make


EchoFactory = Callable[..., EchoModule]


@pytest.fixture
def echo(urls: Callable[[], tuple[str, str]]) -> Iterator[EchoFactory]:
    """``echo(input="router", output="pub", content="none", subscriptions=1)``: a started
    :class:`EchoModule`, stopped (and its error raised) at teardown."""
    modules: list[EchoModule] = []

    def make(
        *,
        input: Literal["router", "pull"] = "router",
        output: Literal["pub", "push"] = "pub",
        content: Literal["none", "original"] = "none",
        subscriptions: int = 1,
    ) -> EchoModule:
        module = EchoModule(
            urls(), input=input, output=output, content=content, subscriptions=subscriptions
        )
        modules.append(module)
        return module.start()

    yield make
    for module in modules:
        module.stop()
