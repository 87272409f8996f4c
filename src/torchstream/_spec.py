"""What a pipeline file gives the CLI: its stages and how to draw its results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from torchstream._draw import AnnotationStyle
from torchstream._types import Stage
from torchstream.pipeline._batcher import BatchPolicy
from torchstream.pipeline._model_stage import CompileMode

__all__ = ["PipelineSpec", "RunConfig"]


@dataclass(frozen=True)
class RunConfig:
    """The run-wide settings a pipeline's ``build`` function receives; the last four are the
    speed options of :class:`~torchstream.pipeline.ModelStage`, for its model stages."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_policy: BatchPolicy = field(default_factory=BatchPolicy)
    half: bool = False
    channels_last: bool = False
    cuda_graphs: bool = False
    compile_mode: CompileMode | None = None


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline definition: the stages in order, and the annotation style of video output.

    A pipeline file (or bundled sample) defines ``build(config: RunConfig, options) ->
    PipelineSpec`` and optionally a frozen dataclass ``Options`` whose fields become
    ``--option-name`` flags of ``torchstream run``.
    """

    stages: Sequence[Stage]
    annotation: AnnotationStyle = field(default_factory=AnnotationStyle)
