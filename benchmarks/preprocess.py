"""Preprocessing cost on the GPU machine, in one run: B decoded 1080p surfaces → one
letterboxed, normalised float16 (B, 3, 384, 640) model input, from RGB and from NV12 (NVDEC's
native output).

    python3 benchmarks/preprocess.py [--batches 1 8 32] [--iterations 50] [--record]

Compared, from RGB: torch ops frame by frame with ``letterbox()`` (antialiased), the same
batched the way a careful user would for same-size frames (stack, one interpolate, pad,
normalise), ``letterbox_batch`` on torch ops, and ``letterbox_batch``'s Triton kernel (one
launch per batch). From NV12: ``letterbox_nv12_batch`` on torch ops, ``nv12_to_rgb`` per frame
followed by ``letterbox_batch``'s kernel (two passes, a full-size RGB copy in between), and
``letterbox_nv12_batch``'s Triton kernel (one launch per batch). GPU time comes from CUDA
events around many back-to-back iterations; host time is what one call costs the calling
thread (launches, Python) with the device idle, which bounds a stage thread under the GIL.
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

from torchstream.surface import (
    letterbox,
    letterbox_batch,
    letterbox_nv12_batch,
    nv12_to_rgb,
)

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


def ours_nv12(backend: str) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    def run(pictures: list[torch.Tensor]) -> torch.Tensor:
        out, _ = letterbox_nv12_batch(
            pictures, height=HEIGHT, width=WIDTH, dtype=torch.float16,
            std=(255.0, 255.0, 255.0), backend=backend,  # type: ignore[arg-type]
        )
        return out

    return run


def nv12_via_rgb(pictures: list[torch.Tensor]) -> torch.Tensor:
    surfaces = [nv12_to_rgb(picture) for picture in pictures]
    out, _ = letterbox_batch(
        surfaces, height=HEIGHT, width=WIDTH, dtype=torch.float16, std=(255.0, 255.0, 255.0),
        backend="triton",
    )
    return out


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


# (input layout, method, the method whose output this one is compared with, or None)
METHODS: list[tuple[str, str, Callable[[list[torch.Tensor]], torch.Tensor], str | None]] = [
    ("RGB", "letterbox() per frame, antialiased", per_frame_letterbox, None),
    ("RGB", "batched torch ops (same-size frames only)", batched_torch, None),
    ("RGB", "letterbox_batch, torch ops", ours("torch"), None),
    ("RGB", "letterbox_batch, Triton (1 launch)", ours("triton"), "letterbox_batch, torch ops"),
    ("NV12", "letterbox_nv12_batch, torch ops", ours_nv12("torch"), None),
    ("NV12", "nv12_to_rgb per frame + letterbox_batch Triton", nv12_via_rgb, None),
    (
        "NV12", "letterbox_nv12_batch, Triton (1 launch)", ours_nv12("triton"),
        "letterbox_nv12_batch, torch ops",
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    generator = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for batch in args.batches:
        inputs = {
            "RGB": [
                torch.randint(0, 256, (1080, 1920, 3), dtype=torch.uint8, device="cuda",
                              generator=generator)
                for _ in range(batch)
            ],
            "NV12": [
                torch.randint(0, 256, (1620, 1920), dtype=torch.uint8, device="cuda",
                              generator=generator)
                for _ in range(batch)
            ],
        }
        outputs: dict[str, torch.Tensor] = {}
        for layout, name, fn, compared_with in METHODS:
            gpu_ms, host_us = measure(fn, inputs[layout], args.iterations)
            outputs[name] = fn(inputs[layout]).float()
            if compared_with is not None:
                difference = (outputs[name] - outputs[compared_with]).abs().max().item()
                name += f" (max diff vs torch ops {difference:.1e})"
            rows.append(
                f"| {batch} | {layout} | {name} | {gpu_ms:.3f} | {batch / gpu_ms * 1e3:,.0f} | "
                f"{host_us:,.0f} |"
            )
            print(rows[-1], flush=True)
    card = torch.cuda.get_device_name(0)
    report([
        f"### Preprocess, 1080p RGB or NV12 → letterboxed fp16 640x384 — {card} — "
        f"{datetime.date.today().isoformat()}",
        "",
        f"torch {torch.__version__}; {args.iterations} iterations per row. Command: "
        f"`python3 benchmarks/preprocess.py --batches {' '.join(map(str, args.batches))} "
        f"--record`",
        "",
        "| batch | input | method | GPU ms per batch | frames/s (GPU time) | host µs per batch |",
        "|---|---|---|---|---|---|",
        *rows,
    ], record=args.record)


if __name__ == "__main__":
    main()
