"""The performance race (issue 4): many 1080p30 cameras through the driving sample on one GPU,
next to what users would otherwise write and to the hardware's ceilings, in one run.

    python3 benchmarks/video.py --source solidWhiteRight.mp4 --weights twinlitenet_best.pth \\
        [--models yolop-arch twinlitenet] [--streams 1 8 32 64 128] [--parts all] [--record]

``--source`` is real content, scaled to 1920x1080 at 30 frames/s and looped forward and
backward (no cut), encoded once with x264 (``--frames`` long); every stream plays it.

Parts (``--parts``, comma-separated; ``all`` by default):

- ``model``: the network alone on preloaded GPU tensors, each speed option at batch 32, then
  the fastest over batch sizes: the model-alone ceiling. The fastest option is what the
  torchstream runs use (``--variant`` forces one when this part is not run).
- ``nvdec``: PyNvVideoCodec alone decoding N streams (its Decoder loop and its
  ThreadedDecoder, frames handed to torch as RGB tensors): the NVDEC ceiling.
- ``torchstream``: ``samples/driving`` in a Pipeline, NVDEC decoding, N cameras paced at
  30 frames/s each, started 1 s apart in total: per-frame latency (frame due, as a camera
  would deliver it -> result in the sink) p50/p95/p99, aggregate and slowest-camera frames/s,
  GPU utilisation (nvidia-smi), host CPU (cores busy), GPU memory. Real time = every camera
  at >= 29 frames/s and p95 <= 150 ms. Then the same with unpaced streams (``max``): the
  end-to-end throughput.
- ``peers``: ``_video_peers.naive`` (OpenCV per stream, batch 1, float32) and
  ``_video_peers.tuned`` (OpenCV decode threads, batches of 32, float16) on the same files,
  unpaced.

Each measurement counts frames finished during ``--seconds`` after ``--warmup-seconds``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _paths  # noqa: F401  (first: this folder's http.py must not shadow the stdlib's)
import av
import numpy as np
import torch
from _report import report
from _video_models import VARIANTS, Variant, model_alone, stage_alone
from _video_report import table
from decode import make_clip, pynvvideocodec_rate

from torchstream import BatchPolicy, Frame, Pipeline
from torchstream._spec import RunConfig
from torchstream.samples import driving
from torchstream.sinks import CallbackSink
from torchstream.sources import VideoSource

_REAL_TIME_FPS = 29.0  # 30 frames/s cameras, 3 % slack for the window's edges
_P95_LIMIT_MS = 150.0


class Paced(VideoSource):
    """A file played at its own frame rate, like a camera; each frame records when it was
    due (``bench.due``, monotonic seconds)."""

    def frames(self) -> Iterator[Frame]:
        start = time.monotonic()
        for frame in super().frames():
            due = start + (frame.pts_seconds or 0.0)
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            frame.attributes["bench.due"] = due
            yield frame


class Unpaced(VideoSource):
    def frames(self) -> Iterator[Frame]:
        for frame in super().frames():
            frame.attributes["bench.due"] = time.monotonic()
            yield frame


class GcWatch:
    """Python's garbage collections (generation, start, seconds), from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float, float]] = []
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.monotonic()
        else:
            now = time.monotonic()
            self.pauses.append((info["generation"], self._started, now - self._started))

    def between(self, start: float, stop: float) -> tuple[int, float]:
        """Collections and the longest one (ms) that started between two monotonic times."""
        inside = [seconds for _, at, seconds in self.pauses if start <= at < stop]
        return len(inside), 1000 * max(inside, default=0.0)


class GpuSampler:
    """nvidia-smi's utilisation and memory every 200 ms, in the background."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []
        try:
            self._process: subprocess.Popen[str] | None = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
        except OSError:
            self._process = None
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            try:
                util, memory = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((time.monotonic(), util, memory))

    def between(self, start: float, stop: float) -> tuple[float | None, float | None]:
        """Mean utilisation (%) and peak memory (MiB) sampled between two monotonic times."""
        inside = [(u, m) for t, u, m in self.samples if start <= t <= stop]
        if not inside:
            return None, None
        return float(np.mean([u for u, _ in inside])), max(m for _, m in inside)

    def close(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()


def torchstream_run(
    clip: Path, warm_clip: Path, model: str, weights: Path | None, streams: int, *,
    paced: bool, variant: Variant, args: argparse.Namespace, sampler: GpuSampler,
) -> dict[str, Any]:
    """One Pipeline of the driving sample over ``streams`` cameras; its measurements."""
    done: list[tuple[float, float, str]] = []
    lock = threading.Condition()
    warmed = 0

    def on_frame(frame: Frame) -> None:
        nonlocal warmed
        now = time.monotonic()
        with lock:
            if frame.source_id == "warm-up":
                warmed += 1
                lock.notify_all()
            else:
                done.append((now, float(frame.attributes["bench.due"]), frame.source_id))

    device = torch.device(args.device)
    config = RunConfig(
        device=device,
        batch_policy=BatchPolicy(
            max_size=args.batch_size, max_wait_seconds=args.max_wait_ms / 1000,
            pad_to_max_size=variant.cuda_graphs,
        ),
        half=variant.half, channels_last=variant.channels_last,
        cuda_graphs=variant.cuda_graphs, compile_mode=variant.compile_mode,  # type: ignore[arg-type]
    )
    options = driving.Options(model=model, weights=str(weights or ""))  # type: ignore[arg-type]
    spec = driving.build(config, options)
    decoder = "nvdec" if device.type == "cuda" else "pyav"
    kind = Paced if paced else Unpaced
    with Pipeline(spec.stages, [CallbackSink(on_frame)], device=device) as pipeline:
        # Warm-up: model loading, graph capture or compilation happen before any camera.
        pipeline.add_source(Unpaced(warm_clip, source_id="warm-up", decoder=decoder))
        with lock:  # every warm-up frame through the sink (compilation may take minutes)
            if not lock.wait_for(lambda: warmed >= 3 * args.batch_size, timeout=600):
                raise RuntimeError(f"warm-up: {warmed} of {3 * args.batch_size} frames")
        torch.cuda.reset_peak_memory_stats() if device.type == "cuda" else None
        for index in range(streams):
            pipeline.add_source(kind(clip, source_id=f"cam{index}", decoder=decoder))
            time.sleep(1.0 / streams)
        start = time.monotonic() + args.warmup_seconds
        stop = start + args.seconds
        time.sleep(max(0.0, start - time.monotonic()))
        cpu_before = os.times()
        profiler = None
        if args.profile_dir is not None and (not paced or args.profile_paced):
            args.profile_dir.mkdir(parents=True, exist_ok=True)
            profiler = subprocess.Popen(
                ["py-spy", "record", "--pid", str(os.getpid()), "--rate", "200", "--threads",
                 "--nonblocking", "--format", "raw", "--duration", str(int(args.seconds)),
                 "-o", str(args.profile_dir / f"pyspy-{model}-{streams}-{int(paced)}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )
        time.sleep(max(0.0, stop - time.monotonic()))
        cpu_after = os.times()
        if profiler is not None:
            profiler.wait()
        stats = pipeline.statistics()
    with lock:
        inside = [(t, due, sid) for t, due, sid in done if start <= t < stop]
    latencies = np.array([t - due for t, due, _ in inside]) * 1000
    # Stalls: the longest time no result came out, and the 100 ms bins with none.
    times = sorted(t for t, _, _ in inside)
    longest_gap_ms = 1000 * max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    empty_bins = 0
    if times:
        bins = np.histogram(times, bins=max(1, int((stop - start) * 10)), range=(start, stop))[0]
        empty_bins = int((bins == 0).sum())
    gc_count, gc_longest_ms = GC_WATCH.between(start, stop)
    per_stream = {f"cam{i}": 0 for i in range(streams)}
    for _, _, sid in inside:
        per_stream[sid] += 1
    util, memory = sampler.between(start, stop)
    cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / (
        stop - start
    )
    result: dict[str, Any] = {
        "model": model, "streams": streams, "paced": paced,
        "variant": variant.name,
        "switch_interval_ms": sys.getswitchinterval() * 1000,
        "fps": len(inside) / args.seconds,
        "slowest_stream_fps": min(per_stream.values()) / args.seconds,
        "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
        "p95_ms": float(np.percentile(latencies, 95)) if len(latencies) else None,
        "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None,
        "gpu_util": util, "gpu_memory_mib": memory, "cpu_cores": cpu,
        "torch_peak_mib": (
            torch.cuda.max_memory_reserved() / 2**20 if device.type == "cuda" else None
        ),
        "dropped": stats.dropped_total,
        "longest_gap_ms": longest_gap_ms, "empty_100ms_bins": empty_bins,
        "gc_collections": gc_count, "gc_longest_ms": gc_longest_ms,
        "batch_mean": stats.stages[0].batcher.mean_batch_size if stats.stages else None,
    }
    result["real_time"] = bool(
        paced and result["slowest_stream_fps"] >= _REAL_TIME_FPS
        and result["p95_ms"] is not None and result["p95_ms"] <= _P95_LIMIT_MS
    )
    print(json.dumps(result), flush=True)
    return result


GC_WATCH = GcWatch()



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=None, help="twinlitenet_best.pth")
    parser.add_argument("--models", nargs="+", default=["yolop-arch", "twinlitenet"])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    parser.add_argument("--max-streams", type=int, nargs="+", default=[64],
                        help="stream counts of the unpaced (throughput) runs")
    parser.add_argument("--peer-streams", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--parts", default="all")
    parser.add_argument("--variant", default=None,
                        help="force a speed option by name (spaces may be written as '-')")
    parser.add_argument("--switch-interval-ms", type=float, default=0.2,
                        help="sys.setswitchinterval for the run, as `torchstream run` sets it "
                             "(Python's own default: 5 ms)")
    parser.add_argument("--contention-streams", type=int, default=64,
                        help="part 'contention': NVDEC streams decoding beside the stage")
    parser.add_argument("--frames", type=int, default=900)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup-seconds", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ts-video"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="py-spy the unpaced runs' measured window into this folder")
    parser.add_argument("--profile-paced", action="store_true",
                        help="with --profile-dir: the paced runs too")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    parts = {"model", "nvdec", "torchstream", "peers"} if args.parts == "all" else set(
        args.parts.split(",")
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    clip = args.workdir / f"clip-{args.frames}.mp4"
    if not clip.exists():
        make_clip(args.source, clip, args.frames)
    warm_clip = args.workdir / "warm.mp4"
    if not warm_clip.exists():
        make_clip(args.source, warm_clip, 3 * args.batch_size)
    cuda = args.device == "cuda"
    card = torch.cuda.get_device_name(0) if cuda else platform.processor() or "CPU"
    results: dict[str, Any] = {"card": card, "date": datetime.date.today().isoformat(),
                               "torch": torch.__version__, "av": av.__version__, "runs": []}
    lines: list[str] = []
    best: dict[str, Variant] = {}
    for model in args.models:
        if "model" in parts and cuda:
            rows = []
            for variant in VARIANTS:
                try:
                    fps, first = model_alone(model, args.weights, variant, 32)
                except Exception as exc:  # a compile failure must not cost the whole run
                    print(f"model alone {model} {variant.name}: FAILED {exc!r}", flush=True)
                    results["runs"].append({"part": "failed", "model": model,
                                            "variant": variant.name, "error": repr(exc)})
                    continue
                rows.append((variant, 32, fps, first))
                print(f"model alone {model} {variant.name} b32: {fps:,.0f} frames/s "
                      f"(first call {first:.1f} s)", flush=True)
            # End to end uses the fastest option whose first call (compilation) takes under
            # a minute: every pipeline of the run pays it again in its warm-up.
            best[model] = max(
                (row for row in rows if row[3] < 60), key=lambda row: row[2]
            )[0]
            for size in (8, 16, 64):
                fps, first = model_alone(model, args.weights, best[model], size)
                rows.append((best[model], size, fps, first))
                print(f"model alone {model} {best[model].name} b{size}: {fps:,.0f}", flush=True)
            results["runs"] += [
                {"part": "model", "model": model, "variant": v.name, "batch": b, "fps": f,
                 "first_call_seconds": s} for v, b, f, s in rows
            ]
            for variant in (best[model], next(v for v in VARIANTS if v.name == "fp16")):
                fps = stage_alone(model, args.weights, variant, 32)
                results["runs"].append({"part": "stage", "model": model,
                                        "variant": variant.name, "batch": 32, "fps": fps})
                print(f"stage alone {model} {variant.name} b32: {fps:,.0f}", flush=True)
    chosen = {
        model: next(v for v in VARIANTS if args.variant in (v.name, v.name.replace(" ", "-")))
        if args.variant
        else best.get(model, next(v for v in VARIANTS if v.cuda_graphs)) for model in args.models
    }
    if "download" in parts and cuda:
        for model in args.models:
            for per_frame in (False, True):
                fps = stage_alone(model, args.weights, chosen[model], 32,
                                  per_frame_download=per_frame)
                name = "per frame, .cpu() of each tensor" if per_frame else "per batch, pinned"
                results["runs"].append({"part": "download", "model": model,
                                        "variant": chosen[model].name, "download": name,
                                        "fps": fps})
                print(f"stage alone {model} download {name}: {fps:,.0f}", flush=True)
    if "contention" in parts and cuda:
        from _video_contention import contention

        for model in args.models:
            for row in contention(clip, model, args.weights, chosen[model],
                                  args.contention_streams):
                results["runs"].append({"part": "contention", "model": model, **row})
                print(json.dumps(row), flush=True)
    if "nvdec" in parts and cuda:
        for n in sorted(set(args.max_streams) | {32}):
            loop = pynvvideocodec_rate([clip] * n)
            threaded = pynvvideocodec_rate([clip] * n, threaded=True)
            results["runs"].append({"part": "nvdec", "streams": n, "loop_fps": loop,
                                    "threaded_fps": threaded})
            print(f"NVDEC alone {n} streams: loop {loop:,.0f}, threaded {threaded:,.0f}",
                  flush=True)
    sampler = GpuSampler()
    try:
        for model in args.models:
            if "torchstream" in parts:
                for n in args.streams:
                    results["runs"].append({"part": "torchstream", **torchstream_run(
                        clip, warm_clip, model, args.weights, n, paced=True,
                        variant=chosen[model], args=args, sampler=sampler)})
                for n in args.max_streams:
                    results["runs"].append({"part": "torchstream", **torchstream_run(
                        clip, warm_clip, model, args.weights, n, paced=False,
                        variant=chosen[model], args=args, sampler=sampler)})
            if "peers" in parts:
                from _video_peers import naive, tuned

                for n in args.peer_streams:
                    for name, peer in (("naive", naive), ("tuned", tuned)):
                        fps = peer([clip] * n, model, args.weights, device=args.device,
                                   warmup_seconds=args.warmup_seconds, seconds=args.seconds)
                        results["runs"].append({"part": "peer", "peer": name, "model": model,
                                                "streams": n, "fps": fps})
                        print(f"peer {name} {model} {n} streams: {fps:,.0f} frames/s", flush=True)
    finally:
        sampler.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    lines += table(results, args)
    report(lines, record=args.record)


if __name__ == "__main__":
    main()
