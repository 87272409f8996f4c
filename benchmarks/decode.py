"""Decode throughput on the GPU machine, in one run: frames delivered to PyTorch as RGB tensors
by torchstream with NVDEC and with PyAV on the CPU, next to PyNvVideoCodec alone (the NVDEC
ceiling), for N concurrent 1080p30 H.264 streams.

    python3 benchmarks/decode.py --source clip.mp4 [--streams 1 4 16 32] [--frames 300] [--record]

``--source`` is real content (scaled to 1920x1080 and looped forward/backward, so the loop has
no cut); every stream decodes its own copy of the clip, started 20 ms apart. torchstream runs a
pipeline with no stages (decode → sink), so the number is what a first stage would receive.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import threading
import time
from pathlib import Path

import _paths  # noqa: F401  (first: this folder's http.py must not shadow the stdlib's)
import av
import torch
from _report import report

from torchstream import Frame, Pipeline
from torchstream.sinks import CallbackSink
from torchstream.sources import VideoSource


def make_clip(source: Path, target: Path, frames: int) -> Path:
    with av.open(str(source)) as src:
        pictures = [
            f.reformat(width=1920, height=1080, format="yuv420p").to_ndarray()
            for f in src.decode(video=0)
        ]
    options = {"preset": "veryfast", "crf": "23", "g": "60"}
    with av.open(str(target), "w") as out:
        stream = out.add_stream("libx264", rate=30, options=options)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"  # type: ignore[union-attr]
        period = 2 * len(pictures) - 2
        for i in range(frames):
            k = i % period
            picture = pictures[k if k < len(pictures) else period - k]
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="yuv420p")):  # type: ignore[union-attr]
                out.mux(packet)
        for packet in stream.encode():  # type: ignore[union-attr]
            out.mux(packet)
    return target


def torchstream_rate(files: list[Path], decoder: str, demuxer: str = "auto") -> float:
    count = 0
    lock = threading.Lock()

    def on_frame(frame: Frame) -> None:
        nonlocal count
        assert frame.surface is not None and frame.surface.shape == (1080, 1920, 3)
        with lock:
            count += 1

    device = "cuda" if decoder == "nvdec" else "cpu"
    started = time.perf_counter()
    with Pipeline([], [CallbackSink(on_frame)], device=device) as pipeline:
        for i, path in enumerate(files):
            source = VideoSource(path, source_id=f"s{i}", decoder=decoder, demuxer=demuxer)  # type: ignore[arg-type]
            pipeline.add_source(source)
            time.sleep(0.02)
        pipeline.wait()
    elapsed = time.perf_counter() - started
    stats = pipeline.statistics()
    assert stats.dropped_total == 0 and not any(s.errors for s in stats.sources.values())
    return count / elapsed


def pynvvideocodec_rate(files: list[Path], threaded: bool = False) -> float:
    """PyNvVideoCodec alone, a thread per stream, each picture handed to torch via DLPack.

    ``threaded``: its ThreadedDecoder (demux and decode on a C++ thread, frames fetched in
    batches of 4); otherwise its demuxer and Decoder in a Python loop."""
    import PyNvVideoCodec as nvc

    counts = [0] * len(files)

    def work(i: int) -> None:
        if threaded:
            decoder = nvc.ThreadedDecoder(
                str(files[i]), buffer_size=16, gpu_id=0, use_device_memory=True,
                output_color_type=nvc.OutputColorType.RGB,
            )
            while pictures := decoder.get_batch_frames(4):
                for picture in pictures:
                    torch.utils.dlpack.from_dlpack(picture)
                    counts[i] += 1
            return
        demuxer = nvc.CreateDemuxer(filename=str(files[i]))
        decoder = nvc.CreateDecoder(
            gpuid=0, codec=demuxer.GetNvCodecId(), usedevicememory=True,
            outputColorType=nvc.OutputColorType.RGB,
        )
        for packet in demuxer:
            for picture in decoder.Decode(packet):
                torch.utils.dlpack.from_dlpack(picture)
                counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(files))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join()
    torch.cuda.synchronize()
    return sum(counts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--frames", type=int, default=900)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ts-decode"))
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    clip = make_clip(args.source, args.workdir / "clip0.mp4", args.frames)
    files = [clip]
    for i in range(1, max(args.streams)):
        files.append(args.workdir / f"clip{i}.mp4")
        if not files[-1].exists():
            shutil.copy(clip, files[-1])
    card = torch.cuda.get_device_name(0)
    rows = []
    for n in args.streams:
        loop = pynvvideocodec_rate(files[:n])
        threaded = pynvvideocodec_rate(files[:n], threaded=True)
        nvdec = torchstream_rate(files[:n], "nvdec")
        cpu = torchstream_rate(files[:n], "pyav")
        ceiling = max(loop, threaded)
        rows.append(
            f"| {n} | {nvdec:.0f} | {loop:.0f} | {threaded:.0f} | {100 * nvdec / ceiling:.0f} % "
            f"| {cpu:.0f} |"
        )
        print(rows[-1], flush=True)
    report([
        f"### Decode, 1080p30 H.264 — {card} — {datetime.date.today().isoformat()}",
        "",
        f"{platform.node() or 'gpu machine'}: torch {torch.__version__}, PyAV {av.__version__}; "
        f"{args.frames} frames per stream, real dashcam content scaled to 1080p.",
        f"Command: `python3 benchmarks/decode.py --source solidWhiteRight.mp4 --streams "
        f"{' '.join(map(str, args.streams))} --frames {args.frames} --record`",
        "",
        "| streams | torchstream NVDEC (RGB tensors, frames/s) | PyNvVideoCodec Decoder loop "
        "(frames/s) | PyNvVideoCodec ThreadedDecoder (frames/s) | of the better one "
        "| torchstream PyAV CPU (frames/s) |",
        "|---|---|---|---|---|---|",
        *rows,
    ], record=args.record)


if __name__ == "__main__":
    main()
