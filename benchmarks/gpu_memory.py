"""GPU and host memory over a long run with sources coming and going (GPU machine).

    python3 benchmarks/gpu_memory.py --source clip.mp4 [--minutes 9] [--concurrent 8]

Keeps ``--concurrent`` NVDEC sources running through a CUDA pipeline (the toy detector in
batches of 8, and an annotated-video sink writing to /tmp): each source plays a 1080p clip of
about 5 s paced at its real frame rate, then ends; a new source with a new id takes its place.
Every 30 s it prints GPU memory allocated/reserved (torch), the device's memory in use (NVDEC
sessions included, which torch does not count), NVDEC sessions opened / reused / idle,
process RSS and thread count. Flat means: the last samples match the first ones after warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import _paths  # noqa: F401  (first: this folder's http.py must not shadow the stdlib's)
import torch
from decode import make_clip

from torchstream import BatchPolicy, Frame, Pipeline
from torchstream.codecs import nvdec_sessions
from torchstream.sinks import CallbackSink, VideoSink
from torchstream.sources import VideoSource
from torchstream.testing import RectangleDetector


class Paced(VideoSource):
    """A file played at its own frame rate, like a camera."""

    def frames(self) -> Iterator[Frame]:
        start = time.monotonic()
        for frame in super().frames():
            delay = start + (frame.pts_seconds or 0.0) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield frame


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=9.0)
    parser.add_argument("--concurrent", type=int, default=8)
    args = parser.parse_args()
    clip = make_clip(args.source, Path("/tmp/ts-memory-clip.mp4"), 150)
    frames = 0
    lock = threading.Lock()

    def count(frame: Frame) -> None:
        nonlocal frames
        with lock:
            frames += 1

    detector = RectangleDetector(batch_policy=BatchPolicy(max_size=8, max_wait_seconds=0.01))
    Path("/tmp/ts-memory").mkdir(exist_ok=True)
    sinks = [CallbackSink(count), VideoSink("/tmp/ts-memory/{source_id}.mkv", preset="ultrafast")]
    rows = []
    started = time.monotonic()
    next_sample = started
    added = 0
    with Pipeline([detector], sinks, device="cuda") as pipeline:
        while time.monotonic() - started < args.minutes * 60:
            while len(pipeline.sources()) < args.concurrent:
                pipeline.add_source(Paced(clip, source_id=f"cam{added}", decoder="nvdec"))
                added += 1
            if time.monotonic() >= next_sample:
                free, total = torch.cuda.mem_get_info()
                sessions = nvdec_sessions().statistics()
                row = (
                    f"| {time.monotonic() - started:6.0f} | {added} | {frames} | "
                    f"{torch.cuda.memory_allocated() / 2**20:.0f} | "
                    f"{torch.cuda.memory_reserved() / 2**20:.0f} | {(total - free) / 2**20:.0f} | "
                    f"{sessions.created} / {sessions.reused} / {sessions.idle} | "
                    f"{rss_mib():.0f} | {threading.active_count()} |"
                )
                rows.append(row)
                print(row, flush=True)
                next_sample += 30
            time.sleep(0.2)
        pipeline.wait()
    for path in Path("/tmp/ts-memory").glob("*.mkv"):
        path.unlink()
    print("\n".join([
        f"### GPU memory, sources coming and going — {torch.cuda.get_device_name(0)} — "
        f"{datetime.date.today().isoformat()}",
        "",
        f"{args.minutes} min, {args.concurrent} concurrent paced 1080p30 NVDEC sources of "
        "~5 s each, toy detector (batch 8) + annotated-video sink.",
        "",
        "| seconds | sources so far | frames | GPU allocated (MiB) | GPU reserved (MiB) | "
        "device in use (MiB) | NVDEC sessions opened / reused / idle | RSS (MiB) | threads |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]))


if __name__ == "__main__":
    main()
