"""The runtime: Pipeline, stages, batching, sessions, channels."""

from torchstream.pipeline._batcher import Batcher, BatcherStatistics, BatchPolicy
from torchstream.pipeline._channel import Channel, ChannelStatistics, EndOfChannel, Policy
from torchstream.pipeline._graphs import CudaGraphs
from torchstream.pipeline._model_stage import CompileMode, Crop, ModelStage, to_host
from torchstream.pipeline._pipeline import Pipeline
from torchstream.pipeline._session import EndReason, Session
from torchstream.pipeline._statistics import (
    LiveStatistics,
    PipelineHealth,
    PipelineStatistics,
    SinkStatistics,
    SourceStatistics,
    StageStatistics,
)
from torchstream.pipeline._tracing import FrameTracer

__all__ = [
    "BatchPolicy",
    "Batcher",
    "BatcherStatistics",
    "Channel",
    "ChannelStatistics",
    "CompileMode",
    "Crop",
    "CudaGraphs",
    "EndOfChannel",
    "EndReason",
    "FrameTracer",
    "LiveStatistics",
    "ModelStage",
    "Pipeline",
    "PipelineHealth",
    "PipelineStatistics",
    "Policy",
    "Session",
    "SinkStatistics",
    "SourceStatistics",
    "StageStatistics",
    "to_host",
]
