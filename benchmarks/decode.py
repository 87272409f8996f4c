"""Decode throughput on the GPU machine, in one run: frames delivered to PyTorch as RGB tensors
by torchstream with NVDEC and with PyAV on the CPU, next to PyNvVideoCodec alone (the NVDEC
ceiling), for N concurrent 1080p30 H.264 streams; then sources that come and go.

    python3 benchmarks/decode.py --source clip.mp4 [--streams 1 4 16 32] [--frames 1200]
        [--churn 32] [--record]

``--source`` is real content (scaled to 1920x1080 and looped forward/backward, so the loop has
no cut); every stream decodes its own copy of the clip, started 20 ms apart. torchstream runs a
pipeline with no stages (decode → sink), so the number is what a first stage would receive.

Each variant reports two rates: **concurrent** (frames per second while all N streams run:
from the last stream's first frame to the first stream's last) and **whole run** (every frame,
from the first stream's start to the last frame; the driver opens sessions one at a time, so
the last of 32 streams starts up to ~2 s late, and the streams end one by one). Decoders are
destroyed after the clock stops in every variant (PyNvVideoCodec's are kept to the end of the
case; torchstream's go back to its session pool).

``--churn N``: N slots, each playing ``--churn-clips`` clips of ``--churn-frames`` frames one
after the other (a new source for each clip): torchstream with its sessions reused and with
reuse off, PyNvVideoCodec with a new decoder per clip and with one decoder kept per slot.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import _paths  # noqa: F401  (first: this folder's http.py must not shadow the stdlib's)
import av
import torch
from _report import report

from torchstream import Frame, Pipeline
from torchstream.codecs import nvdec_sessions
from torchstream.pipeline import Session
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


@dataclass(frozen=True)
class Rate:
    concurrent: float
    """Frames/s while every stream was running."""
    whole: float
    """Frames/s from the first start to the last frame."""
    last_start_seconds: float
    """When the last stream's first frame came, after the first stream started."""


def rate(stamps: list[list[float]], started: float) -> Rate:
    """``stamps``: per stream, the time each frame arrived."""
    stamps = [s for s in stamps if s]
    frames = sum(map(len, stamps))
    first, last = max(s[0] for s in stamps), min(s[-1] for s in stamps)
    inside = sum(1 for s in stamps for t in s if first <= t <= last)
    concurrent = inside / (last - first) if last > first else 0.0
    return Rate(concurrent, frames / (max(s[-1] for s in stamps) - started), first - started)


def staggered(work: Callable[[int], None], count: int) -> float:
    """Run ``work(0)`` .. ``work(count - 1)`` on threads started 20 ms apart, as the
    torchstream cases add their sources; wait for all and for the GPU. When the first
    started (``time.perf_counter``)."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join()
    torch.cuda.synchronize()
    return started


def torchstream_rate(files: list[Path], decoder: str) -> Rate:
    stamps: dict[str, list[float]] = {}
    clock = time.perf_counter

    def on_frame(frame: Frame) -> None:  # one sink thread: no lock needed
        assert frame.surface is not None and frame.surface.shape == (1080, 1920, 3)
        stamps.setdefault(frame.source_id, []).append(clock())

    device = "cuda" if decoder == "nvdec" else "cpu"
    started = clock()
    with Pipeline([], [CallbackSink(on_frame)], device=device) as pipeline:
        for i, path in enumerate(files):
            pipeline.add_source(VideoSource(path, source_id=f"s{i}", decoder=decoder))  # type: ignore[arg-type]
            time.sleep(0.02)
        pipeline.wait()
    stats = pipeline.statistics()
    assert stats.dropped_total == 0 and not any(s.errors for s in stats.sources.values())
    return rate(list(stamps.values()), started)


def pynvvideocodec_rate(files: list[Path], threaded: bool = False) -> Rate:
    """PyNvVideoCodec alone, a thread per stream, each picture handed to torch via DLPack.

    ``threaded``: its ThreadedDecoder (demux and decode on a C++ thread, frames fetched in
    batches of 4); otherwise its demuxer and Decoder in a Python loop."""
    import PyNvVideoCodec as nvc

    stamps: list[list[float]] = [[] for _ in files]
    kept: list[object] = []  # destroyed after the clock stops
    clock = time.perf_counter

    def work(i: int) -> None:
        mine = stamps[i]
        if threaded:
            decoder = nvc.ThreadedDecoder(
                str(files[i]), buffer_size=16, gpu_id=0, use_device_memory=True,
                output_color_type=nvc.OutputColorType.RGB,
            )
            kept.append(decoder)
            while pictures := decoder.get_batch_frames(4):
                for picture in pictures:
                    torch.utils.dlpack.from_dlpack(picture)
                    mine.append(clock())
            return
        demuxer = nvc.CreateDemuxer(filename=str(files[i]))
        decoder = nvc.CreateDecoder(
            gpuid=0, codec=demuxer.GetNvCodecId(), usedevicememory=True,
            outputColorType=nvc.OutputColorType.RGB,
        )
        kept.append(decoder)
        for packet in demuxer:
            for picture in decoder.Decode(packet):
                torch.utils.dlpack.from_dlpack(picture)
                mine.append(clock())

    started = staggered(work, len(files))
    result = rate(stamps, started)
    kept.clear()
    return result


def churn_torchstream(files: list[list[Path]], reuse: bool) -> tuple[float, str]:
    """Slot i plays files[i] one after the other, a new source each; frames/s and the
    sessions opened / reused."""
    pool = nvdec_sessions()
    pool.clear()
    max_idle, pool.max_idle = pool.max_idle, (pool.max_idle if reuse else 0)
    before = pool.statistics()
    ended: queue.Queue[str] = queue.Queue()
    count = 0
    last = 0.0

    def on_frame(frame: Frame) -> None:
        nonlocal count, last
        count += 1
        last = time.perf_counter()

    def on_end(session: Session) -> None:
        ended.put(session.source_id)

    position = [0] * len(files)
    started = time.perf_counter()
    try:
        with Pipeline(
            [], [CallbackSink(on_frame, on_session_end=on_end)], device="cuda"
        ) as pipeline:
            for slot in range(len(files)):
                pipeline.add_source(VideoSource(files[slot][0], source_id=f"{slot}.0"))
                time.sleep(0.02)
            running = len(files)
            while running:
                slot = int(ended.get().split(".")[0])
                position[slot] += 1
                if position[slot] < len(files[slot]):
                    pipeline.add_source(
                        VideoSource(
                            files[slot][position[slot]], source_id=f"{slot}.{position[slot]}"
                        )
                    )
                else:
                    running -= 1
            pipeline.wait()
        after = pool.statistics()
    finally:
        pool.max_idle = max_idle
    return count / (last - started), (
        f"{after.created - before.created} opened, {after.reused - before.reused} reused"
    )


def churn_pynvvideocodec(files: list[list[Path]], keep: bool) -> float:
    """A thread per slot, each clip demuxed and decoded in a Python loop; ``keep``: one
    decoder per slot, flushed between clips (else a new decoder per clip)."""
    import PyNvVideoCodec as nvc

    counts = [0] * len(files)
    last = [0.0] * len(files)

    def work(slot: int) -> None:
        decoder = None
        for path in files[slot]:
            demuxer = nvc.CreateDemuxer(filename=str(path))
            if decoder is None or not keep:
                decoder = nvc.CreateDecoder(
                    gpuid=0, codec=demuxer.GetNvCodecId(), usedevicememory=True,
                    outputColorType=nvc.OutputColorType.RGB,
                )
            end = nvc.PacketData()
            end.bsl, end.bsl_data = 0, 0
            for packet in demuxer:  # a packet is valid until the next one is read
                for picture in decoder.Decode(packet):
                    torch.utils.dlpack.from_dlpack(picture)
                    counts[slot] += 1
            for picture in decoder.Decode(end):
                torch.utils.dlpack.from_dlpack(picture)
                counts[slot] += 1
            last[slot] = time.perf_counter()

    started = staggered(work, len(files))
    return sum(counts) / (max(last) - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--churn", type=int, default=0, help="slots of the churn case (0: none)")
    parser.add_argument("--churn-clips", type=int, default=8)
    parser.add_argument("--churn-frames", type=int, default=90)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ts-decode"))
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    clip = args.workdir / f"clip0-{args.frames}.mp4"
    if not clip.exists():
        make_clip(args.source, clip, args.frames)
    files = [clip]
    for i in range(1, max(args.streams)):
        files.append(args.workdir / f"clip{i}-{args.frames}.mp4")
        if not files[-1].exists():
            shutil.copy(clip, files[-1])
    card = torch.cuda.get_device_name(0)
    rows = []
    for n in args.streams:
        loop = pynvvideocodec_rate(files[:n])
        threaded = pynvvideocodec_rate(files[:n], threaded=True)
        nvdec = torchstream_rate(files[:n], "nvdec")
        cpu = torchstream_rate(files[:n], "pyav")
        best = max(loop.concurrent, threaded.concurrent)
        best_whole = max(loop.whole, threaded.whole)
        rows.append(
            f"| {n} | {nvdec.concurrent:,.0f} | {loop.concurrent:,.0f} | "
            f"{threaded.concurrent:,.0f} | {100 * nvdec.concurrent / best:.0f} % "
            f"| {nvdec.whole:,.0f} | {loop.whole:,.0f} | {threaded.whole:,.0f} | "
            f"{100 * nvdec.whole / best_whole:.0f} % | {cpu.concurrent:,.0f} | "
            f"{nvdec.last_start_seconds:.2f} / {loop.last_start_seconds:.2f} / "
            f"{threaded.last_start_seconds:.2f} |"
        )
        print(rows[-1], flush=True)
    lines = [
        f"### Decode, 1080p30 H.264 — {card} — {datetime.date.today().isoformat()}",
        "",
        f"{platform.node() or 'gpu machine'}: torch {torch.__version__}, PyAV {av.__version__}; "
        f"{args.frames} frames per stream, real dashcam content scaled to 1080p.",
        f"Command: `python3 benchmarks/decode.py --source solidWhiteRight.mp4 --streams "
        f"{' '.join(map(str, args.streams))} --frames {args.frames}"
        f"{f' --churn {args.churn}' if args.churn else ''} --record`",
        "",
        "frames/s of RGB tensors; *concurrent*: while all streams run; *whole run*: first start "
        "to last frame. PyNvVideoCodec: Decoder in a Python loop / ThreadedDecoder.",
        "",
        "| streams | torchstream NVDEC, concurrent | PyNvVideoCodec loop | PyNvVideoCodec "
        "threaded | of the better one | torchstream NVDEC, whole run | loop | threaded "
        "| of the better one | torchstream PyAV CPU, concurrent | last stream's first frame "
        "(s: torchstream / loop / threaded) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    if args.churn:
        short = args.workdir / f"clip0-{args.churn_frames}.mp4"
        if not short.exists():
            make_clip(args.source, short, args.churn_frames)
        playlists = []
        for slot in range(args.churn):
            playlists.append([])
            for k in range(args.churn_clips):
                path = args.workdir / f"churn{slot}-{k}.mp4"
                if not path.exists():
                    shutil.copy(short, path)
                playlists[-1].append(path)
        reused, reused_note = churn_torchstream(playlists, reuse=True)
        fresh, fresh_note = churn_torchstream(playlists, reuse=False)
        naive = churn_pynvvideocodec(playlists, keep=False)
        kept = churn_pynvvideocodec(playlists, keep=True)
        lines += [
            "",
            f"Sources that come and go: {args.churn} slots, each playing {args.churn_clips} "
            f"clips of {args.churn_frames} frames one after the other (a new source per clip); "
            "frames/s from the first start to the last frame.",
            "",
            "| torchstream, sessions reused | torchstream, reuse off | PyNvVideoCodec, new "
            "decoder per clip | PyNvVideoCodec, one decoder per slot |",
            "|---|---|---|---|",
            f"| {reused:,.0f} ({reused_note}) | {fresh:,.0f} ({fresh_note}) | {naive:,.0f} "
            f"| {kept:,.0f} |",
        ]
    report(lines, record=args.record)


if __name__ == "__main__":
    main()
