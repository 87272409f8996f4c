"""NVDEC decoding on the GPU, checked against PyAV's CPU decode of the same files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchstream import BatchPolicy, Frame, Pipeline, SourceError
from torchstream.sinks import CallbackSink
from torchstream.sources import VideoSource
from torchstream.testing import MovingRect, RectangleDetector, SyntheticVideo, write_video

pytestmark = pytest.mark.gpu

VIDEO = SyntheticVideo(
    width=640,
    height=360,
    rects=(
        MovingRect("red", 10, 40, 80, 60, (6, 0)),
        MovingRect("green", 300, 150, 60, 90, (-4, 0)),
        MovingRect("blue", 200, 280, 120, 40, (8, 0)),
    ),
)
MAD_BOUND = 3.0
"""Mean absolute RGB difference allowed between NVDEC and PyAV (different YUV→RGB kernels)."""


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("nvdec")
    return {
        "h264": write_video(folder / "clip.mp4", VIDEO, 45, codec="libx264"),
        "hevc": write_video(folder / "clip-hevc.mp4", VIDEO, 45, codec="libx265"),
        "mjpeg": write_video(folder / "clip.avi", VIDEO, 20, codec="mjpeg"),
    }


def decode(path: Path, decoder: str, demuxer: str = "auto") -> list[Frame]:
    source = VideoSource(path, decoder=decoder, demuxer=demuxer)  # type: ignore[arg-type]
    source.prepare(torch.device("cuda"))
    source.open()
    assert source.decoder_used == decoder
    frames = list(source.frames())
    source.close()
    return frames


@pytest.mark.parametrize("demuxer", ["auto", "pyav"])
@pytest.mark.parametrize("codec", ["h264", "hevc", "mjpeg"])
def test_nvdec_matches_pyav(clips: dict[str, Path], codec: str, demuxer: str) -> None:
    # demuxer "auto": PyNvVideoCodec's demuxer reads these local files; "pyav": PyAV's.
    gpu, cpu = decode(clips[codec], "nvdec", demuxer), decode(clips[codec], "pyav")
    assert len(gpu) == len(cpu) > 0
    for a, b in zip(gpu, cpu, strict=True):
        assert a.surface is not None and a.surface.is_cuda and a.surface.dtype == torch.uint8
        assert a.surface.shape == (360, 640, 3)
        assert a.pts_seconds == pytest.approx(b.pts_seconds, abs=1e-6)
        assert a.keyframe == b.keyframe, (codec, a.seq)
        a.__dict__["_ready"].synchronize()
        mad = (a.surface.cpu().float() - b.surface.float()).abs().mean().item()  # type: ignore[union-attr]
        assert mad < MAD_BOUND, (codec, a.seq, mad)
    assert gpu[0].keyframe


def test_auto_picks_nvdec_on_cuda_and_pyav_on_cpu(clips: dict[str, Path]) -> None:
    for device, expected in (("cuda", "nvdec"), ("cpu", "pyav")):
        source = VideoSource(clips["h264"])
        source.prepare(torch.device(device))
        source.open()
        assert source.decoder_used == expected
        source.close()


@pytest.mark.parametrize("demuxer", ["auto", "pyav"])
def test_truncated_file_fails_its_source_after_delivering_frames(
    clips: dict[str, Path], tmp_path: Path, demuxer: str
) -> None:
    data = write_video(tmp_path / "whole.mp4", VIDEO, 45, codec="libx264", faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data.read_bytes()[: data.stat().st_size * 2 // 3])
    source = VideoSource(cut, decoder="nvdec", demuxer=demuxer)  # type: ignore[arg-type]
    source.prepare(torch.device("cuda"))
    delivered = 0
    with pytest.raises(SourceError, match=r"cut\.mp4"):
        for _ in source.frames():
            delivered += 1
    source.close()
    assert delivered > 0


def run_pipeline(path: Path, decoder: str, device: str) -> list[Frame]:
    frames: list[Frame] = []
    detector = RectangleDetector(batch_policy=BatchPolicy(max_size=8, max_wait_seconds=0.01))
    with Pipeline([detector], [CallbackSink(frames.append)], device=device) as pipeline:
        for i in range(4):
            pipeline.add_source(VideoSource(path, source_id=f"cam{i}", decoder=decoder))  # type: ignore[arg-type]
        pipeline.wait()
    return sorted(frames, key=lambda f: (f.source_id, f.seq))


def test_pipeline_on_nvdec_finds_the_same_boxes(clips: dict[str, Path]) -> None:
    gpu = run_pipeline(clips["h264"], "nvdec", "cuda")
    cpu = run_pipeline(clips["h264"], "pyav", "cpu")
    assert len(gpu) == len(cpu) == 180
    for a, b in zip(gpu, cpu, strict=True):
        assert [o.label for o in a.objects] == [o.label for o in b.objects]
        for oa, ob in zip(a.objects, b.objects, strict=True):
            assert max(abs(x - y) for x, y in zip(oa.box, ob.box, strict=True)) <= 2


@pytest.mark.filterwarnings("ignore:Warning. Profiler clears events")
def test_no_host_copy_of_frames_on_the_video_path(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    run_pipeline(clips["h264"], "nvdec", "cuda")  # warm up: model setup copies weights
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        frames = run_pipeline(clips["h264"], "nvdec", "cuda")
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    copies = [
        (e["name"], int(e.get("args", {}).get("bytes", 0)))
        for e in json.loads(trace.read_text())["traceEvents"]
        if e.get("cat") == "gpu_memcpy" and ("HtoD" in e["name"] or "DtoH" in e["name"])
    ]
    frame_bytes = 640 * 360 * 3
    # NVDEC uploads a few bytes of colour-conversion constants per picture and the model's
    # results come back once per batch; no picture-sized copy crosses the bus either way.
    assert copies, "the profiler saw no copies at all: it did not trace this run"
    largest = sorted(copies, key=lambda c: c[1])[-3:]
    assert largest[-1][1] < frame_bytes / 10, largest
    to_host = [c for c in copies if "DtoH" in c[0]]
    assert len(to_host) < len(frames) / 2, len(to_host)


SCRIPT = """
import json, sys
from torchstream import BatchPolicy, Pipeline
from torchstream.sinks import CallbackSink
from torchstream.sources import VideoSource
from torchstream.testing import RectangleDetector
out = []
detector = RectangleDetector(batch_policy=BatchPolicy(max_size=8, max_wait_seconds=0.01))
with Pipeline([detector], [CallbackSink(out.append)], device="cuda") as p:
    for i in range(4):
        p.add_source(VideoSource(sys.argv[1], source_id=f"cam{i}", decoder="nvdec"))
    p.wait()
print(json.dumps(sorted([f.source_id, f.seq, [o.box for o in f.objects]] for f in out)))
"""


def test_streams_and_events_give_the_synchronous_result(clips: dict[str, Path]) -> None:
    def run(blocking: bool) -> object:
        env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1" if blocking else "0")
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(clips["h264"])],
            capture_output=True, env=env, timeout=300, check=True,
        )
        return json.loads(done.stdout.decode().strip().splitlines()[-1])

    assert run(blocking=False) == run(blocking=True)
