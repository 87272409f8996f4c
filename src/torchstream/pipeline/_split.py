"""A model stage as two pipeline stages: queue the GPU work, then wait for it and finish."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from torchstream.frame import Frame
from torchstream.pipeline._batcher import BatchPolicy

if TYPE_CHECKING:
    from torchstream.pipeline._model_stage import Crop, ModelStage

__all__ = ["split_model_stage"]

_PENDING = "_model_results"  # frame.__dict__ key: {stage name: [(crop, device result), ...]}


class _Infer:
    """Steps 1-5a of a model stage; results stay on the device, attached to their frames."""

    def __init__(self, stage: ModelStage) -> None:
        self.stage = stage
        self.name = stage.name
        self.batch_policy = stage.batch_policy

    def setup(self, device: torch.device) -> None:
        self.stage.setup(device)

    def process(self, frames: Sequence[Frame]) -> None:
        stage = self.stage
        crops = [crop for frame in frames for crop in stage.select(frame)]
        for frame in frames:  # a frame without crops still gets its (empty) result list
            frame.__dict__.setdefault(_PENDING, {})[self.name] = []
        if not crops:
            return
        step = stage.max_crops_per_forward or len(crops)
        with torch.inference_mode():
            for start in range(0, len(crops), step):
                chunk = crops[start : start + step]
                results = _own(stage.infer(chunk), stage)
                for crop, result in zip(chunk, results, strict=True):
                    crop.frame.__dict__[_PENDING][self.name].append((crop, result))

    def close(self) -> None:
        close = getattr(self.stage, "close", None)
        if close is not None:
            close()


class _Finish:
    """Steps 5b-6 of a model stage, on its own thread and CUDA stream."""

    def __init__(self, stage: ModelStage) -> None:
        self.stage = stage
        self.key = stage.name
        self.name = f"{stage.name}.results"
        # Whatever has arrived, in one go: the first half already formed the batches.
        self.batch_policy = BatchPolicy(max_size=stage.batch_policy.max_size, max_wait_seconds=0)

    def process(self, frames: Sequence[Frame]) -> None:
        pairs: list[tuple[Crop, Any]] = []
        for frame in frames:
            pending = frame.__dict__.get(_PENDING, {})
            if self.key not in pending:
                raise RuntimeError(
                    f"stage {self.name!r}: frame {frame.source_id}#{frame.seq} has no results of "
                    f"stage {self.key!r}; put the two halves of split() next to each other"
                )
            pairs += pending[self.key]
        if pairs:
            with torch.inference_mode():
                self.stage.finish([crop for crop, _ in pairs], [result for _, result in pairs])
        for frame in frames:  # only once every frame of the batch is done: a retry needs them
            pending = frame.__dict__[_PENDING]
            del pending[self.key]
            if not pending:
                del frame.__dict__[_PENDING]


def _own(results: list[Any], stage: ModelStage) -> list[Any]:
    """Copies of any result tensors that are views of CUDA graph outputs (which the next
    replay overwrites while the second half may not have read them yet)."""
    graphs = stage._graphs
    if graphs is None:
        return results
    shared = graphs.output_storages()
    if not shared:
        return results

    def own(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            return item.clone() if item.untyped_storage().data_ptr() in shared else item
        if isinstance(item, list):
            return [own(v) for v in item]
        if isinstance(item, tuple):
            values = [own(v) for v in item]
            return type(item)(*values) if hasattr(item, "_fields") else tuple(values)
        if isinstance(item, dict):
            return {k: own(v) for k, v in item.items()}
        return item

    return [own(result) for result in results]


def split_model_stage(stage: ModelStage) -> tuple[_Infer, _Finish]:
    return _Infer(stage), _Finish(stage)
