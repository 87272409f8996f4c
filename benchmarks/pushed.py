"""Where a NATS worker's frames/s go: the same pipeline fed by files, and by pushed sources
(what a module or worker makes of received packets) on shared or own threads, in-process,
unpaced, one run.

    python3 benchmarks/pushed.py --source solidWhiteRight.mp4 [--cameras 32] [--frames 300] \\
        [--pipeline driving] [--options "--model yolop-arch"] [--batch-size 32]

``--source`` is re-encoded once as a camera sends it (1920x1080, 30 frames a keyframe, no
B-frames: ``_clips.camera_clip``). Each mode decodes every camera with NVDEC and runs the
pipeline's stages with fp16, channels-last and CUDA graphs; it reports frames/s from the
first result to the last, and the model stage's batches and busy time. No NATS anywhere: a
worker slower than the ``pushed`` rows spends the difference on its NATS side.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _paths  # noqa: F401  (first: this folder's http.py must not shadow the stdlib's)
from _clips import camera_clip

from torchstream import Pipeline
from torchstream._cli_common import load_pipeline, parse_options
from torchstream._spec import RunConfig
from torchstream.codecs import demux_packets
from torchstream.pipeline import BatchPolicy
from torchstream.sinks import CallbackSink
from torchstream.sources import PushedSource, VideoSource
from torchstream.sources._pushed import decode_threads


class _Clock:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def tick(self, frame: Any) -> None:
        now = time.perf_counter()
        with self.lock:
            if not self.count:
                self.first = now
            self.count += 1
            self.last = now


def _run(mode: str, args: argparse.Namespace, clip: Path, packets: list[Any]) -> dict[str, Any]:
    import torch

    module = load_pipeline(args.pipeline)
    cuda = args.device == "cuda"
    config = RunConfig(
        device=torch.device(args.device),
        batch_policy=BatchPolicy(max_size=args.batch_size, max_wait_seconds=0.01,
                                 pad_to_max_size=cuda),
        half=cuda, channels_last=cuda, cuda_graphs=cuda,
    )
    decoder: Any = "nvdec" if cuda else "pyav"
    spec = module.build(config, parse_options(module, shlex.split(args.options)))
    clock = _Clock()
    shared = None
    if mode == "pushed-shared":
        shared = args.decode_threads or decode_threads(args.device)
    with Pipeline(spec.stages, [CallbackSink(clock.tick)], device=args.device,
                  shared_source_threads=shared) as pipeline:
        if mode == "files":
            for index in range(args.cameras):
                pipeline.add_source(VideoSource(clip, source_id=f"cam{index}", decoder=decoder))
        else:
            cameras = [PushedSource(f"cam{i}", decoder=decoder, max_queued=64)
                       for i in range(args.cameras)]
            for camera in cameras:
                pipeline.add_source(camera)

            def feed(mine: list[PushedSource]) -> None:
                for packet in packets:
                    for camera in mine:
                        camera.push_packet(
                            packet.data, codec=packet.codec, pts=packet.pts,
                            time_base=packet.time_base, keyframe=packet.keyframe, timeout=600,
                        )
                for camera in mine:
                    camera.end()

            feeders = [threading.Thread(target=feed, args=(cameras[k::4],)) for k in range(4)]
            for feeder in feeders:
                feeder.start()
        assert pipeline.wait(timeout_seconds=900)
    stats = pipeline.statistics()
    stage = max(stats.stages, key=lambda s: s.busy_seconds)
    seconds = clock.last - clock.first
    return {
        "mode": mode, "frames": clock.count, "seconds": seconds,
        "fps": (clock.count - 1) / seconds if seconds > 0 else 0.0,
        "stage": stage.name, "batches": stage.batches_total,
        "per_batch": stage.frames_total / max(1, stage.batches_total),
        "busy": stage.busy_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--cameras", type=int, default=32)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--pipeline", default="driving")
    parser.add_argument("--options", default="--model yolop-arch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--decode-threads", type=int, default=None,
                        help="shared threads of the pushed-shared mode (default: the module's)")
    parser.add_argument("--device", default="cuda",
                        help="cpu: a smoke test (PyAV, no speed options)")
    parser.add_argument("--modes", nargs="+", default=["files", "pushed-shared", "pushed-own"])
    args = parser.parse_args()
    sys.setswitchinterval(0.0002)  # as the CLI's default
    with tempfile.TemporaryDirectory() as tmp:
        clip = camera_clip(args.source, Path(tmp) / "camera.mp4", size=(1920, 1080),
                           frames=args.frames)
        packets = list(demux_packets(str(clip), source_id="clip"))
        print(f"{args.cameras} cameras x {len(packets)} frames of 1920x1080 H.264, "
              f"batch {args.batch_size}, {args.pipeline} {args.options}", flush=True)
        print("| mode | frames | frames/s | batches (frames a batch) | stage busy |")
        print("|---|---|---|---|---|")
        for mode in args.modes:
            r = _run(mode, args, clip, packets)
            print(f"| {r['mode']} | {r['frames']} | {r['fps']:.0f} | {r['batches']} "
                  f"({r['per_batch']:.1f}) | {r['busy']:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
