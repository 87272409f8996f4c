"""The networks of benchmarks/video.py and the model-alone ceiling (preloaded GPU tensors)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchstream.pipeline import CudaGraphs
from torchstream.samples.driving._twinlitenet import load_twinlitenet
from torchstream.samples.driving._yolop import YOLOP, fuse_batch_norms

INPUT_SIZE = {"yolop-arch": (384, 640), "twinlitenet": (360, 640)}  # (height, width)


def network(model: str, weights: Path | None) -> torch.nn.Module:
    """The raw network of ``model`` on the CPU, in evaluation mode (what every peer uses)."""
    if model == "yolop-arch":
        torch.manual_seed(0)
        return fuse_batch_norms(YOLOP().eval())
    if model == "twinlitenet":
        if weights is None:
            raise SystemExit("twinlitenet needs --weights twinlitenet_best.pth")
        return load_twinlitenet(weights)
    raise SystemExit(f"unknown model {model!r}")


@dataclass(frozen=True)
class Variant:
    """One way of running the network: precision, memory order, graphs or compilation."""

    name: str
    half: bool = True
    channels_last: bool = False
    cuda_graphs: bool = False
    compile_mode: str | None = None


VARIANTS = (
    Variant("fp32", half=False),
    Variant("fp16"),
    Variant("fp16 channels-last", channels_last=True),
    Variant("fp16 channels-last CUDA graphs", channels_last=True, cuda_graphs=True),
    Variant("fp16 channels-last compile default", channels_last=True, compile_mode="default"),
    Variant(
        "fp16 channels-last compile default CUDA graphs",
        channels_last=True,
        compile_mode="default",
        cuda_graphs=True,
    ),
)
"""The speed options measured, at batch 32. (``max-autotune`` modes were left out: their
autotuning takes minutes of the GPU machine's short lease.)"""


def runner(model: str, weights: Path | None, variant: Variant) -> Callable[[torch.Tensor], Any]:
    """A callable running the network on a CUDA batch as ``variant`` says."""
    net = network(model, weights).cuda()
    if variant.half:
        net = net.half()
    if variant.channels_last:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if variant.compile_mode:
        net = torch.compile(net, mode=variant.compile_mode, dynamic=False)  # type: ignore[assignment]
    if variant.cuda_graphs:
        graphs = CudaGraphs()
        return lambda batch: graphs(net, batch)
    return net


def model_alone(
    model: str, weights: Path | None, variant: Variant, batch_size: int, seconds: float = 1.5
) -> tuple[float, float]:
    """Frames/s of the network alone on a preloaded batch, and the seconds the first call
    (compilation, graph capture) took."""
    height, width = INPUT_SIZE[model]
    dtype = torch.float16 if variant.half else torch.float32
    batch = torch.rand(batch_size, 3, height, width, device="cuda", dtype=dtype)
    run = runner(model, weights, variant)
    with torch.inference_mode():
        started = time.perf_counter()
        run(batch)
        torch.cuda.synchronize()
        first = time.perf_counter() - started
        for _ in range(3):
            run(batch)
        torch.cuda.synchronize()
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(5):
                run(batch)
            count += 5
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    return count * batch_size / elapsed, first


def _download_per_frame(stage: Any) -> None:
    """Make ``stage`` bring its results to the host the way scripts do: each result's
    tensors copied by ``.cpu()`` (pageable memory, one synchronisation each), then read as
    tensors; instead of one pinned, asynchronous copy per batch read as NumPy arrays."""

    def per_frame(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            return item.cpu()
        if isinstance(item, tuple):
            values = [per_frame(v) for v in item]
            return type(item)(*values) if hasattr(item, "_fields") else tuple(values)
        if isinstance(item, list):
            return [per_frame(v) for v in item]
        return item

    def finish(crops: Any, results: list[Any]) -> None:
        results = stage.finalize(results, crops)
        for crop, result in zip(crops, results, strict=True):
            stage.attach(crop, per_frame(result))

    stage.finish = finish


def stage_alone(
    model: str,
    weights: Path | None,
    variant: Variant,
    batch_size: int,
    seconds: float = 2.0,
    *,
    per_frame_download: bool = False,
) -> float:
    """Frames/s of the sample's whole model stage (letterbox kernel, network, postprocess on
    the GPU, one download, metadata) on ``batch_size`` decoded 1080p frames already on the
    GPU: the stage's ceiling, without decoding. ``per_frame_download``: results copied to the
    host frame by frame instead (:func:`_download_per_frame`)."""
    from torchstream import BatchPolicy, Frame
    from torchstream._spec import RunConfig
    from torchstream.samples import driving

    config = RunConfig(
        device=torch.device("cuda"),
        batch_policy=BatchPolicy(max_size=batch_size, pad_to_max_size=variant.cuda_graphs),
        half=variant.half,
        channels_last=variant.channels_last,
        cuda_graphs=variant.cuda_graphs,
        compile_mode=variant.compile_mode,  # type: ignore[arg-type]
    )
    options = driving.Options(model=model, weights=str(weights or ""))  # type: ignore[arg-type]
    (stage,) = driving.build(config, options).stages
    stage.setup(torch.device("cuda"))  # type: ignore[attr-defined]
    if per_frame_download:
        _download_per_frame(stage)
    generator = torch.Generator(device="cuda").manual_seed(0)
    surfaces = [
        torch.randint(0, 256, (1080, 1920, 3), dtype=torch.uint8, device="cuda",
                      generator=generator)
        for _ in range(batch_size)
    ]

    def batch() -> list[Frame]:
        frames = []
        for index, surface in enumerate(surfaces):
            frame = Frame(source_id=f"cam{index}", seq=0, width=1920, height=1080)
            frame.surface = surface
            frames.append(frame)
        return frames

    for _ in range(3):
        stage.process(batch())
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        stage.process(batch())
        count += batch_size
    return count / (time.perf_counter() - started)
