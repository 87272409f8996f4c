"""The tables of benchmarks/video.py, from its results."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def table(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    runs = results["runs"]
    lines = [
        f"### Driving perception, 1080p30 H.264 cameras — {results['card']} — {results['date']}",
        "",
        f"torch {results['torch']}, PyAV {results['av']}; batch {args.batch_size}, "
        f"max wait {args.max_wait_ms} ms; {args.seconds} s measured after {args.warmup_seconds} s; "
        f"Python switch interval {sys.getswitchinterval() * 1000:g} ms.",
        f"Command: `python3 benchmarks/video.py --source solidWhiteRight.mp4 --weights "
        f"twinlitenet_best.pth --models {' '.join(args.models)} --streams "
        f"{' '.join(map(str, args.streams))} --max-streams {' '.join(map(str, args.max_streams))} "
        f"--peer-streams {' '.join(map(str, args.peer_streams))} --parts {args.parts}"
        f"{' --variant ' + repr(args.variant) if args.variant else ''}`",
        "",
    ]
    model_runs = [r for r in runs if r["part"] == "model"]
    if model_runs:
        lines += ["Model alone (preloaded GPU tensors):", "",
                  "| model | speed option | batch | frames/s | first call (s) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['variant']} | {r['batch']} | {r['fps']:,.0f} | "
                  f"{r['first_call_seconds']:.1f} |" for r in model_runs]
        lines.append("")
    stage_runs = [r for r in runs if r["part"] == "stage"]
    if stage_runs:
        lines += ["The sample's model stage alone (decoded 1080p frames already on the GPU: "
                  "letterbox kernel, network, GPU postprocess, one download, metadata):", "",
                  "| model | speed option | batch | frames/s |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['variant']} | {r['batch']} | {r['fps']:,.0f} |"
                  for r in stage_runs]
        lines.append("")
    download_runs = [r for r in runs if r["part"] == "download"]
    if download_runs:
        lines += ["The model stage alone, results to the host per batch (pinned, asynchronous, "
                  "as NumPy) or per frame:", "",
                  "| model | speed option | download | frames/s |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['variant']} | {r['download']} | {r['fps']:,.0f} |"
                  for r in download_runs]
        lines.append("")
    contention_runs = [r for r in runs if r["part"] == "contention"]
    if contention_runs:
        lines += ["The model stage alone with NVDEC decoding beside it (Python switch interval "
                  f"{sys.getswitchinterval() * 1000:g} ms):", "",
                  "| model | speed option | decoders | stage (frames/s) | decode (frames/s) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['variant']} | {r['decoders']} | {r['stage_fps']:,.0f} | "
                  f"{_fmt(r['decode_fps'])} |" for r in contention_runs]
        lines.append("")
    nvdec_runs = [r for r in runs if r["part"] == "nvdec"]
    if nvdec_runs:
        lines += ["NVDEC alone (PyNvVideoCodec, RGB tensors):", "",
                  "| streams | Decoder loop (frames/s) | ThreadedDecoder (frames/s) |",
                  "|---|---|---|"]
        lines += [f"| {r['streams']} | {r['loop_fps']:,.0f} | {r['threaded_fps']:,.0f} |"
                  for r in nvdec_runs]
        lines.append("")
    ours = [r for r in runs if r["part"] == "torchstream"]
    if ours:
        lines += ["torchstream `samples/driving` (NVDEC → letterbox kernel → model → GPU "
                  "postprocess → sink):", "",
                  "| model | streams | paced | speed option | frames/s | slowest camera "
                  "(frames/s) | p50 / p95 / p99 (ms) | real time | GPU util (%) | GPU memory "
                  "(MiB) | host CPU (cores) | mean batch |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in ours:
            lines.append(
                f"| {r['model']} | {r['streams']} | {'30 fps' if r['paced'] else 'max'} | "
                f"{r['variant']} | {r['fps']:,.0f} | {r['slowest_stream_fps']:.1f} | "
                f"{_fmt(r['p50_ms'])} / {_fmt(r['p95_ms'])} / {_fmt(r['p99_ms'])} | "
                f"{'yes' if r['real_time'] else 'no'} | {_fmt(r['gpu_util'])} | "
                f"{_fmt(r['gpu_memory_mib'])} | {r['cpu_cores']:.1f} | {_fmt(r['batch_mean'], 1)} |"
            )
        lines.append("")
        for model in args.models:
            held = [r["streams"] for r in ours if r["model"] == model and r["real_time"]]
            lines.append(f"- {model}: largest N in real time with p95 <= 150 ms: "
                         f"{max(held) if held else 'none'}")
        lines.append("")
    peers = [r for r in runs if r["part"] == "peer"]
    if peers:
        lines += ["Peers (unpaced, same files and network):", "",
                  "| model | peer | streams | frames/s |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['peer']} | {r['streams']} | {r['fps']:,.0f} |"
                  for r in peers]
        lines.append("")
    return lines
