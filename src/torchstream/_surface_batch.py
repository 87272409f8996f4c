"""What a batched, normalised letterbox needs whatever its pixel layout (RGB surfaces in
:mod:`torchstream.surface`, NV12 pictures in :mod:`torchstream._surface_nv12`): the argument
checks, each frame's geometry, the output batch, the normaliser, and the choice between the
Triton kernel and torch ops."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from torchstream.models._boxes import Letterbox

Backend = Literal["auto", "triton", "torch"]


def check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got height={height}, width={width}")


def check_dtype(dtype: torch.dtype) -> None:
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point dtype, got {dtype}")


def check_backend(backend: str) -> None:
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")


def check_batch_options(
    *, mean: Sequence[float], std: Sequence[float], backend: str, count: int, what: str
) -> None:
    """The options every batch function shares; ``what`` names its inputs in messages."""
    check_backend(backend)
    if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
        raise ValueError(f"mean and std need 3 values each, std non-zero: {mean!r}, {std!r}")
    if count == 0:
        raise ValueError(f"a letterboxed batch needs at least one {what}")


def output_batch(
    out: Tensor | None,
    *,
    count: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """``out[:count]`` after checking it, or a new ``(count, 3, height, width)`` tensor."""
    if out is None:
        return torch.empty((count, 3, height, width), dtype=dtype, device=device)
    if (
        out.dim() != 4
        or out.shape[0] < count
        or tuple(out.shape[1:]) != (3, height, width)
        or out.device != device
        or not out.is_contiguous()
        or not out.dtype.is_floating_point
    ):
        raise ValueError(
            f"out must be a contiguous floating point ({count} or more, 3, {height}, {width}) "
            f"tensor on {device}, got {out.dtype} {tuple(out.shape)} on {out.device}"
        )
    return out[:count]


def same_device(frames: Sequence[Tensor]) -> torch.device:
    device = frames[0].device
    if any(frame.device != device for frame in frames):
        raise ValueError("all frames of a batch must be on the same device")
    return device


@functools.lru_cache(maxsize=256)
def fit(source_width: int, source_height: int, width: int, height: int) -> Letterbox:
    """Letterbox.fit, remembered: a stream's frames all have the same size (Letterbox is
    immutable)."""
    return Letterbox.fit(
        source_width=source_width,
        source_height=source_height,
        target_width=width,
        target_height=height,
    )


@functools.lru_cache(maxsize=256)
def placement(box: Letterbox) -> tuple[float, int, int, int, int]:
    """(scale, top, left, content height, content width): what the kernels need of a box."""
    rows, columns = box.content_slices()
    return (box.scale, rows.start or 0, columns.start or 0, box.content_height, box.content_width)


@functools.lru_cache(maxsize=16)
def normaliser(device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``value * n[c] + n[3 + c]`` per output channel, kept on the device (one upload)."""
    values = [1.0 / s for s in std] + [-m / s for m, s in zip(mean, std, strict=True)]
    return torch.tensor(values, dtype=torch.float32).to(device)


def use_kernel(device: torch.device, backend: str, layout_problem: str | None) -> bool:
    """Whether a Triton kernel takes the batch; with ``backend="triton"``, say why not.

    ``layout_problem`` is the caller's reason its tensors' memory layout does not suit the
    kernel, or None."""
    if backend == "torch":
        return False
    from torchstream._kernels import triton_available

    reason = None
    if device.type != "cuda":
        reason = f"the frames are on {device}, not CUDA"
    elif not triton_available():
        reason = "Triton is not installed (CUDA builds of torch ship it)"
    else:
        reason = layout_problem
    if reason is not None and backend == "triton":
        raise ValueError(f"backend='triton' cannot run: {reason}")
    return reason is None
