"""Preprocessing cost on the GPU machine, in one run: B decoded 1080p RGB surfaces → one
letterboxed, normalised float16 (B, 3, 384, 640) model input.

    python3 benchmarks/preprocess.py [--batches 1 8 32] [--iterations 50] [--record]

Compared: torch ops frame by frame with ``letterbox()`` (antialiased), the same batched the
way a careful user would for same-size frames (stack, one interpolate, pad, normalise),
``letterbox_batch`` on torch ops, and ``letterbox_batch``'s Triton kernel (one launch per
batch). GPU time comes from CUDA events around many back-to-back iterations; host time is
what one call costs the calling thread (launches, Python) with the device idle, which bounds
a stage thread under the GIL.
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable

import _paths  # noqa: F401  (first: this folder's http.py must not shadow the stdlib's)
import torch
import torch.nn.functional as F
from _report import report

from torchstream.surface import letterbox, letterbox_batch

HEIGHT, WIDTH = 384, 640


def per_frame_letterbox(surfaces: list[torch.Tensor]) -> torch.Tensor:
    images = [letterbox(s, height=HEIGHT, width=WIDTH)[0] for s in surfaces]
    return torch.stack(images).div_(255.0).half()


def batched_torch(surfaces: list[torch.Tensor]) -> torch.Tensor:
    batch = torch.stack(surfaces).permute(0, 3, 1, 2).float()
    content = F.interpolate(batch, size=(360, 640), mode="bilinear", align_corners=False)
    out = torch.full((len(surfaces), 3, HEIGHT, WIDTH), 114.0, device=batch.device)
    out[:, :, 12:372] = content
    return out.div_(255.0).half()


def ours(backend: str) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    def run(surfaces: list[torch.Tensor]) -> torch.Tensor:
        out, _ = letterbox_batch(
            surfaces, height=HEIGHT, width=WIDTH, dtype=torch.float16,
            std=(255.0, 255.0, 255.0), backend=backend,  # type: ignore[arg-type]
        )
        return out

    return run


def measure(
    fn: Callable[[list[torch.Tensor]], torch.Tensor], surfaces: list[torch.Tensor], iterations: int
) -> tuple[float, float]:
    """(GPU milliseconds per batch, host microseconds per batch).

    GPU time: back-to-back calls between two events (the device's throughput). Host time:
    each call timed alone with the device idle before it, so it is the cost of issuing the
    work (in a GPU-bound loop the host would instead wait for queue room and read the same
    as the GPU)."""
    for _ in range(3):
        fn(surfaces)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        fn(surfaces)
    end.record()
    end.synchronize()
    host = 0.0
    for _ in range(iterations):
        torch.cuda.synchronize()
        began = time.perf_counter()
        fn(surfaces)
        host += time.perf_counter() - began
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iterations, 1e6 * host / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    generator = torch.Generator(device="cuda").manual_seed(0)
    methods = {
        "letterbox() per frame, antialiased": per_frame_letterbox,
        "batched torch ops (same-size frames only)": batched_torch,
        "letterbox_batch, torch ops": ours("torch"),
        "letterbox_batch, Triton (1 launch)": ours("triton"),
    }
    reference = None
    rows = []
    for batch in args.batches:
        surfaces = [
            torch.randint(0, 256, (1080, 1920, 3), dtype=torch.uint8, device="cuda",
                          generator=generator)
            for _ in range(batch)
        ]
        for name, fn in methods.items():
            gpu_ms, host_us = measure(fn, surfaces, args.iterations)
            if name.startswith("letterbox_batch, Triton"):
                difference = (fn(surfaces).float() - reference).abs().max().item()  # type: ignore[operator]
                name += f" (max diff vs torch ops {difference:.1e})"
            if name == "letterbox_batch, torch ops":
                reference = fn(surfaces).float()
            rows.append(
                f"| {batch} | {name} | {gpu_ms:.3f} | {batch / gpu_ms * 1e3:,.0f} | "
                f"{host_us:,.0f} |"
            )
            print(rows[-1], flush=True)
    card = torch.cuda.get_device_name(0)
    report([
        f"### Preprocess, 1080p RGB → letterboxed fp16 640x384 — {card} — "
        f"{datetime.date.today().isoformat()}",
        "",
        f"torch {torch.__version__}; {args.iterations} iterations per row. Command: "
        f"`python3 benchmarks/preprocess.py --batches {' '.join(map(str, args.batches))} "
        f"--record`",
        "",
        "| batch | method | GPU ms per batch | frames/s (GPU time) | host µs per batch |",
        "|---|---|---|---|---|",
        *rows,
    ], record=args.record)


if __name__ == "__main__":
    main()
