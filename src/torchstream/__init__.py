"""torchstream: serve PyTorch models on live video streams and images.

The few names most users need are here; sources and sinks live in ``torchstream.sources`` and
``torchstream.sinks``, test helpers in ``torchstream.testing``.
"""

from torchstream._draw import AnnotationStyle
from torchstream._errors import (
    BrokenResourceError,
    ClosedResourceError,
    MissingDependencyError,
    OverloadedError,
    PipelineError,
    SourceError,
    StageError,
    TorchStreamError,
)
from torchstream._spec import PipelineSpec, RunConfig
from torchstream._types import Sink, Source, Stage
from torchstream.frame import (
    SCHEMA_VERSION,
    Frame,
    Keypoint,
    Mask,
    ObjectMeta,
    decode_json,
    decode_msgpack,
    encode_json,
    encode_msgpack,
)
from torchstream.pipeline import (
    BatchPolicy,
    Crop,
    ModelStage,
    Pipeline,
    PipelineStatistics,
    Session,
)

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "AnnotationStyle",
    "BatchPolicy",
    "BrokenResourceError",
    "ClosedResourceError",
    "Crop",
    "Frame",
    "Keypoint",
    "Mask",
    "MissingDependencyError",
    "ModelStage",
    "ObjectMeta",
    "OverloadedError",
    "Pipeline",
    "PipelineError",
    "PipelineSpec",
    "PipelineStatistics",
    "RunConfig",
    "Session",
    "Sink",
    "Source",
    "SourceError",
    "Stage",
    "StageError",
    "TorchStreamError",
    "__version__",
    "decode_json",
    "decode_msgpack",
    "encode_json",
    "encode_msgpack",
]
