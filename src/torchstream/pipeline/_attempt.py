"""Running one stage on one batch: isolate failing frames, split batches that run out of
memory, and (in debug mode) catch stages that write into frame surfaces."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torchstream._types import Stage
from torchstream.frame import Frame

__all__ = ["BatchOutcome", "SurfaceModifiedError", "run_batch"]


class SurfaceModifiedError(RuntimeError):
    """A stage changed a frame's surface in place (debug mode found it). Frames are read-only:
    crop or resize into a new tensor, and draw on an output canvas."""


@dataclass
class BatchOutcome:
    passed: list[Frame] = field(default_factory=list)
    failed: list[tuple[Frame, Exception]] = field(default_factory=list)
    oom_splits: int = 0


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc)
    )


def _fingerprint(surface: torch.Tensor | None) -> tuple[Any, ...] | None:
    if surface is None:
        return None
    flat = surface.reshape(-1)
    total = int(flat.sum(dtype=torch.int64))
    # Position-weighted: a swap of two pixels or a moved block changes it too.
    weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.int64) % 65521
    weighted = int((flat.to(torch.int64) * weights).sum())
    return (surface.data_ptr(), tuple(surface.shape), surface.stride(), total, weighted)


def run_batch(stage: Stage, frames: Sequence[Frame], *, guard_surfaces: bool) -> BatchOutcome:
    """Run ``stage.process`` on ``frames`` and sort them into passed and failed.

    A batch that raises is retried frame by frame, so only the frames that fail alone are
    lost; one that runs out of memory is split in halves and each half retried (down to
    single frames) before anything is declared failed. Every retry starts from the frames'
    metadata as it was before the first attempt. With ``guard_surfaces`` each frame's surface
    is fingerprinted (pointer, shape, strides, checksums) before and after: a frame whose
    surface changed fails with :class:`SurfaceModifiedError` naming the stage.
    """
    outcome = BatchOutcome()
    snapshots = {id(f): (list(f.objects), dict(f.attributes)) for f in frames}
    before = {id(f): _fingerprint(f.surface) for f in frames} if guard_surfaces else {}

    def restore(batch: Sequence[Frame]) -> None:
        for frame in batch:
            objects, attributes = snapshots[id(frame)]
            frame.objects[:], frame.attributes = list(objects), dict(attributes)

    # A stack of batches to try, not a recursive closure: a closure that calls itself is a
    # reference cycle, and it would hold the batch's frames (their surfaces, GPU memory
    # included) until the garbage collector's next full pass instead of freeing them here.
    pending = [list(frames)]
    while pending:
        batch = pending.pop()
        try:
            stage.process(batch)
        except Exception as exc:
            restore(batch)
            if len(batch) == 1:
                outcome.failed.append((batch[0], exc))
            elif is_out_of_memory(exc):
                outcome.oom_splits += 1
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                half = len(batch) // 2
                pending += [batch[half:], batch[:half]]  # the first half first
            else:
                pending += [[frame] for frame in reversed(batch)]  # one by one, in order
            continue
        outcome.passed.extend(batch)
    if guard_surfaces:
        intact = []
        for frame in outcome.passed:
            if _fingerprint(frame.surface) != before[id(frame)]:
                outcome.failed.append((
                    frame,
                    SurfaceModifiedError(
                        f"stage {stage.name!r} modified the surface of "
                        f"{frame.source_id}#{frame.seq} in place; frames are read-only "
                        "(crop into a new tensor, draw on an output canvas)"
                    ),
                ))
            else:
                intact.append(frame)
        outcome.passed = intact
    return outcome
