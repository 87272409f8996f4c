"""The live source adapter: ``torchstream source url rtsp://…`` and ``source camera`` against
GStreamer's RTSP server, into a real module, across a server crash."""

from __future__ import annotations

import contextlib
import itertools
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream import Frame, SourceError, decode_json
from torchstream.codecs import decode_image
from torchstream.sources._live import LiveDemuxer
from torchstream.testing import RtspTestServer
from torchstream.transport import (
    FrameMessage,
    ImagePayload,
    PacketPayload,
    RawPayload,
    Receiver,
    ResultMessage,
)
from torchstream.transport._adapter_stats import SendMonitor
from torchstream.transport._live_adapter import _Timeline, camera_options, send_live

PIPELINE = '''
from torchstream import PipelineSpec, RunConfig


def build(config: RunConfig, options: None) -> PipelineSpec:
    return PipelineSpec(stages=[])
'''


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchstream.cli", *args]


class Lines:
    """JSON lines of a sink process's stdout, read by a thread; tests wait on them."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.frames: list[tuple[float, Frame]] = []  # (monotonic arrival, frame)
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(b"{"):
                with self._changed:
                    self.frames.append((time.monotonic(), decode_json(line)))
                    self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout_seconds: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(predicate, timeout_seconds):
                raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}")


def _stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_source_url_survives_a_server_crash_in_one_module_session(
    own_rtsp_server: RtspTestServer, tmp_path: Path
) -> None:
    pipeline = tmp_path / "nothing.py"
    pipeline.write_text(PIPELINE)
    inbound, outbound = f"ipc://{tmp_path}/in", f"ipc://{tmp_path}/out"
    module = subprocess.Popen(
        cli("module", str(pipeline), "--in", f"router+bind:{inbound}",
            "--out", f"push+bind:{outbound}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    sink = subprocess.Popen(
        cli("sink", "json", "-", "--in", f"pull+connect:{outbound}", "--exit-after", "1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    adapter = subprocess.Popen(
        cli("source", "url", own_rtsp_server.url("/h264"), "--source-id", "cam",
            "--out", f"dealer+connect:{inbound}", "--read-timeout", "1", "--open-timeout", "3"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    lines = Lines(sink)
    frames = lines.frames
    try:
        lines.wait_for(lambda: len(frames) >= 25, 30, "first frames")
        own_rtsp_server.kill()
        killed_at = time.monotonic()
        time.sleep(1.0)  # the camera stays down a while
        own_rtsp_server.start()
        ready_at = time.monotonic()

        def gapped() -> list[int]:
            return [i for i, (_, f) in enumerate(frames) if "live.gap_seconds" in f.attributes]

        try:
            lines.wait_for(lambda: bool(gapped()) and len(frames) > gapped()[0] + 25, 30,
                           "frames after the restart")
        except AssertionError:
            adapter.send_signal(signal.SIGTERM)
            adapter.wait(30)
            raise AssertionError(
                f"{len(frames)} frames, last {frames[-1][1] if frames else None}; adapter: "
                f"{adapter.stderr.read().decode()}"  # type: ignore[union-attr]
            ) from None
        assert adapter.poll() is None and sink.poll() is None  # no end of stream meanwhile
        adapter.send_signal(signal.SIGTERM)
        assert adapter.wait(30) == 0, adapter.stderr.read().decode()  # type: ignore[union-attr]
        assert sink.wait(30) == 0, sink.stderr.read().decode()  # type: ignore[union-attr]
        report = adapter.stdout.read().decode()  # type: ignore[union-attr]
        report += adapter.stderr.read().decode()  # type: ignore[union-attr]
        module.send_signal(signal.SIGTERM)
        assert module.wait(30) == 0, module.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        _stop(adapter, sink, module)
    (index,) = gapped()
    first_after_at, first_after = frames[index]
    seen = [f for _, f in frames]
    gap = first_after.attributes["live.gap_seconds"]
    print(  # for the record: how long a camera restart costs through the adapter
        f"frames again in the sink {first_after_at - ready_at:.2f} s after the server "
        f"listened again; gap {gap:.2f} s; {len(seen)} frames; adapter: {report.strip()}"
    )
    assert {f.source_id for f in seen} == {"cam"}
    seqs = [f.seq for f in seen]
    assert all(b > a for a, b in itertools.pairwise(seqs))  # one numbering, in order
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # every packet became a frame
    assert isinstance(gap, float) and gap >= first_after_at - killed_at - 2.0 > 0
    assert first_after.keyframe
    assert all("live.wallclock_seconds" in f.attributes for f in seen)
    stamps = [f.pts_seconds for f in seen if f.pts_seconds is not None]
    assert all(b > a for a, b in itertools.pairwise(stamps))  # the clock never goes back
    # RTSP's first packets may have no pts: compare the stamped frames around the gap.
    before = [f.pts_seconds for f in seen[:index] if f.pts_seconds is not None][-1]
    after = next(f.pts_seconds for f in seen[index:] if f.pts_seconds is not None)
    assert after - before == pytest.approx(gap, abs=0.01)
    assert "packets sent, 1 reconnects" in report
    assert first_after_at - ready_at < 6.0


def _receive_one_message(
    url: str, tmp_path: Path, **send_options: object
) -> tuple[FrameMessage, bytes, int]:
    """Run send_live on ``url`` (with ``send_options``) until its first few messages reached
    a router; return the last of them with its payload, and how many came."""
    endpoint = f"ipc://{tmp_path}/live-{url.rsplit('/', 1)[-1]}"
    stop = threading.Event()
    demuxer = LiveDemuxer(url, source_id="cam", read_timeout_seconds=2.0, stop_event=stop)
    got: list[tuple[FrameMessage, bytes]] = []
    with Receiver(f"router+bind:{endpoint}") as inbox:
        sender = threading.Thread(
            target=send_live, args=(demuxer, f"dealer+connect:{endpoint}"),
            kwargs={"stop": stop, **send_options}, name="ts/test/send-live",
        )
        sender.start()
        try:
            while len(got) < 3:
                message, payload = inbox.recv(10.0)
                if isinstance(message, FrameMessage):
                    assert payload is not None
                    got.append((message, bytes(payload)))
        finally:
            stop.set()
            while sender.is_alive():  # its end of stream: answered by the receiver
                with_eos = inbox.recv(10.0)
                del with_eos
                sender.join(0.1)
    message, data = got[-1]
    return message, data, len(got)


def test_mjpeg_goes_as_images_and_raw_pictures_as_raw_payloads(
    own_rtsp_server: RtspTestServer, tmp_path: Path
) -> None:
    message, data, count = _receive_one_message(own_rtsp_server.url("/mjpeg"), tmp_path)
    assert isinstance(message.payload, ImagePayload) and message.payload.format == "jpeg"
    rgb, codec = decode_image(data, source_id="cam")
    assert codec == "mjpeg" and tuple(rgb.shape) == (240, 320, 3)
    assert message.metadata is not None and message.seq == count - 1
    assert "live.wallclock_seconds" in message.metadata.attributes
    assert message.pts_seconds is not None

    message, data, _ = _receive_one_message(own_rtsp_server.url("/raw"), tmp_path)
    payload = message.payload
    assert isinstance(payload, RawPayload)  # UYVY from the server, nv12 on the wire
    assert (payload.format, payload.width, payload.height) == ("nv12", 320, 240)
    assert len(data) == payload.nbytes
    luma = np.frombuffer(data, np.uint8)[: 320 * 240].reshape(240, 320)
    assert luma.std() > 10  # SMPTE bars, not a blank picture

    message, data, _ = _receive_one_message(own_rtsp_server.url("/h264"), tmp_path)
    assert isinstance(message.payload, PacketPayload) and message.payload.codec == "h264"


class _RecordingTracer:
    """An AdapterTracer that records its spans and gives each send a traceparent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    @contextlib.contextmanager
    def sending(self, source_id: str, seq: int) -> Iterator[str | None]:
        self.sent.append((source_id, seq))
        yield f"00-{'ab' * 16}-{seq + 1:016x}-01"

    @contextlib.contextmanager
    def writing(self, result: ResultMessage) -> Iterator[None]:
        yield


def test_live_frames_are_counted_and_traced(
    own_rtsp_server: RtspTestServer, tmp_path: Path
) -> None:
    monitor, tracer = SendMonitor(), _RecordingTracer()
    message, _, count = _receive_one_message(
        own_rtsp_server.url("/h264"), tmp_path, monitor=monitor, tracer=tracer
    )
    assert message.traceparent == f"00-{'ab' * 16}-{message.seq + 1:016x}-01"
    assert tracer.sent[:count] == [("cam", seq) for seq in range(count)]  # one span a frame
    stats = monitor.statistics()
    assert stats.sending == frozenset() and stats.failed == {}
    assert stats.senders["cam"].sent >= count + 1  # its frames and its end of stream

    # A live input that fails for good counts as the source's failure.
    demuxer = LiveDemuxer(own_rtsp_server.url("/missing"), source_id="gone", max_reconnects=0,
                          open_timeout_seconds=5.0)
    with pytest.raises(SourceError):  # not found: fatal at once
        send_live(demuxer, f"push+connect:ipc://{tmp_path}/nobody", monitor=monitor)
    assert monitor.statistics().failed == {"gone": 1}


def test_timeline_goes_on_across_a_restarted_clock() -> None:
    timeline, base = _Timeline(), Fraction(1, 90000)
    timeline.restart(None)
    assert timeline.shift(None, None, base) == (None, None)
    assert timeline.shift(900, 900, base) == (900, 900)  # the first connection: as it is
    assert timeline.shift(4500, 4500, base) == (4500, 4500)
    timeline.restart(2.5)  # the camera came back 2.5 s later, its clock at 0 again
    pts, dts = timeline.shift(0, 0, base)
    assert pts == dts == 4500 + 225000
    assert timeline.shift(3600, 3600, base) == (pts + 3600, dts + 3600)
    timeline.restart(0.5)  # another time base: the offset is kept in seconds
    pts2, _ = timeline.shift(10, None, Fraction(1, 1000))
    assert pts2 is not None
    assert Fraction(pts2, 1000) == (4500 + 225000 + 3600) * base + Fraction(1, 2)


def test_camera_options_and_a_missing_camera(tmp_path: Path) -> None:
    assert camera_options(size=(1280, 720), fps=30, input_format="mjpeg") == {
        "video_size": "1280x720", "framerate": "30", "input_format": "mjpeg",
    }
    assert camera_options() == {}
    with pytest.raises(ValueError, match="input_format must be"):
        camera_options(input_format="rgb")  # type: ignore[arg-type]
    done = subprocess.run(
        cli("source", "camera", "/dev/video99", "--out", f"dealer+connect:ipc://{tmp_path}/m",
            "--size", "640x480", "--fps", "15", "--input-format", "yuyv422",
            "--max-reconnects", "0"),
        capture_output=True, timeout=60, check=False,
    )
    assert done.returncode == 1, done.stderr
    output = done.stdout + done.stderr
    assert b"dev_video99" in output and b"/dev/video99" in output
    assert b"gave up after 0 reconnect attempts" in output
    done = subprocess.run(
        cli("source", "camera", "/dev/video0", "--out", f"dealer+connect:ipc://{tmp_path}/m",
            "--size", "large"),
        capture_output=True, timeout=60, check=False,
    )
    assert done.returncode == 2 and b"--size" in done.stderr
