"""LiveSource on a plain MPEG-TS over TCP stream (no RTSP server needed): decoded by PyAV on
the CPU and by NVDEC on a GPU — the GPU machine has no RTSP server, so this is where the
live source's NVDEC path is checked."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchstream import Frame, Pipeline
from torchstream.sinks import CallbackSink
from torchstream.sources import LiveSource
from torchstream.testing import SyntheticVideo, write_video

SERVER = '''
import sys, time, av
clip, url = sys.argv[1], sys.argv[2]
with av.open(clip) as src:
    stream = src.streams.video[0]
    with av.open(url + "?listen=1", mode="w", format="mpegts") as out:
        sent = out.add_stream_from_template(stream)
        started = time.monotonic()
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            delay = started + float(packet.pts * stream.time_base) - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # a camera's pace
            packet.stream = sent
            out.mux(packet)
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("device", "decoder"),
    [("cpu", "pyav"), pytest.param("cuda", "nvdec", marks=pytest.mark.gpu)],
)
def test_a_live_tcp_stream_is_decoded(tmp_path: Path, device: str, decoder: str) -> None:
    video = SyntheticVideo(width=320, height=192)
    clip = write_video(tmp_path / "clip.mp4", video, 50, codec="libx264")
    server = tmp_path / "server.py"
    server.write_text(SERVER)
    url = f"tcp://127.0.0.1:{_free_port()}"
    frames: list[Frame] = []
    with subprocess.Popen([sys.executable, str(server), str(clip), url]) as process:
        try:
            time.sleep(1.0)  # the server process listens
            # The server sends the clip as fast as it can, and a live frame that finds the
            # queues full pushes the oldest out (counted): room for all of it here.
            with Pipeline([], [CallbackSink(frames.append)], device=device,
                          source_queue_capacity=256, queue_capacity=256) as pipeline:
                pipeline.add_source(LiveSource(url, source_id="tcp", max_reconnects=0,
                                               open_timeout_seconds=10))
                pipeline.wait(timeout_seconds=60)  # the stream ends: no reconnect allowed
                stats = pipeline.statistics().sources["tcp"]
        finally:
            process.kill()
    assert stats.decoder == decoder
    assert len(frames) >= 45  # the first GOP may start late; the rest all decode
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert {(f.width, f.height) for f in frames} == {(320, 192)}
    surfaces = [f.surface for f in frames if f.surface is not None]
    assert surfaces and {s.device.type for s in surfaces} == {device}
    # The pictures are the clip's (H.264 is lossy: compare loosely with the rendered frame).
    reference = video.render(frames[-1].seq + (50 - len(frames))).float()
    assert (surfaces[-1].cpu().float() - reference).abs().mean() < 12
