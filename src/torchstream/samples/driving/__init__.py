"""Driving perception on dashcam video: vehicles, drivable area and lane lines (issue 4).

``torchstream run driving --model yolop-arch --input dashcam.mp4 --output annotated.mp4``

Three models, chosen with ``--model``:

- ``twinlitenet`` (the default): TwinLiteNet (Quang-Huy Che et al., 2023, arXiv:2307.10705),
  a 0.44 M-parameter segmentation network trained on BDD100K (drivable area and lane lines,
  no vehicles), as one batched stage (:class:`TwinLiteNetSegmentation`). The network is our
  own definition; its trained weights (``twinlitenet_best.pth``, MIT licence, from the
  TwinLiteNet project) are a file you pass with ``--weights``.
- ``yolop``: YOLOP (Dong Wu et al., 2021, arXiv:2108.11250), 7.9 M parameters, trained on
  BDD100K: vehicles, drivable area and lane lines (:class:`YolopPerception`). Loaded from
  TorchHub, ``torch.hub.load("hustvl/yolop", "yolop", pretrained=True)``: downloaded once
  (network needed) into TorchHub's cache; ``--hub-repo FOLDER`` loads a local clone instead.
- ``yolop-arch``: our own definition of the YOLOP architecture (:class:`YOLOP`) with random
  weights: same input, heads, parameter count and cost as ``yolop``, for measuring speed where
  the trained model cannot be downloaded. Its results mean nothing; every frame carries the
  attribute ``"driving.random_weights": true``.

Metadata, every frame, whatever is found:

- ``"vehicle"`` objects (YOLOP only): box in frame pixels, confidence = objectness x class
  score (at least ``--confidence-threshold``), after NMS at ``--iou-threshold``;
- ``"drivable_area"``: the road surface the car may drive on (the ego lane and the lanes
  beside it);
- ``"lane_line"``: the painted lane markings.

The two regions carry their ``mask`` (run-length encoded: ``counts`` alternate runs of 0 and
1 over the row-major mask, starting with 0) at the network's resolution without the
letterbox padding (640x360 for a 16:9 frame), stretched over their ``box``, which is the whole
frame; ``confidence`` is the network's mean probability over the mask's pixels. Masks, not
frame attributes, because the annotated video and every metadata consumer already read an
object's mask. A 1080p frame's two masks take about 1-4 KB of JSON.

The annotated video blends the two regions in distinct colours and outlines the vehicles.

Speed (``torchstream run`` flags, for CUDA): ``--half``, ``--channels-last``, ``--cuda-graphs``
(fixed-shape batches replayed as one graph) or ``--compile MODE``; measured in
``benchmarks/video.py`` (results in ``benchmarks/RESULTS.md``). Rule of thumb on a 2-core CPU:
TwinLiteNet runs the 221 frames of a 960x540 dashcam clip at about 3 frames/s in batches of 4;
YOLOP at about 2 frames/s.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torchstream._draw import AnnotationStyle
from torchstream._spec import PipelineSpec, RunConfig
from torchstream.samples.driving._stages import (
    DRIVABLE_AREA,
    LANE_LINE,
    VEHICLE,
    TwinLiteNetSegmentation,
    YolopPerception,
)
from torchstream.samples.driving._yolop import YOLOP

__all__ = [
    "DRIVABLE_AREA",
    "LANE_LINE",
    "VEHICLE",
    "YOLOP",
    "Options",
    "TwinLiteNetSegmentation",
    "YolopPerception",
    "build",
]

Model = Literal["twinlitenet", "yolop", "yolop-arch"]
MODELS: tuple[Model, ...] = ("twinlitenet", "yolop", "yolop-arch")

DEFAULT_WEIGHTS = "../shared/assets/driving/twinlitenet_best.pth"
"""Where TwinLiteNet's weights are looked for when ``weights`` is empty, relative to the
working directory: the shared assets folder beside a development checkout."""


@dataclass(frozen=True)
class Options:
    """The sample's settings; each field is a ``--option-name`` flag of ``torchstream run``.

    Raises ValueError (a usage error on the command line) for an unknown model, a weights
    file that does not exist or a malformed input size, naming the option.
    """

    model: Model = field(default="twinlitenet", metadata={"help": "the network"})
    weights: str = field(
        default="",
        metadata={
            "help": "twinlitenet: trained state dict (empty: twinlitenet_best.pth in "
            "../shared/assets/driving/, from the working directory)"
        },
    )
    hub_repo: str = field(
        default="hustvl/yolop",
        metadata={"help": "yolop: TorchHub repository (GitHub owner/name, or a local clone)"},
    )
    input_size: str = field(
        default="640x384",
        metadata={"help": "yolop, yolop-arch: network input WIDTHxHEIGHT, multiples of 32"},
    )
    confidence_threshold: float = field(
        default=0.25, metadata={"help": "yolop: lowest vehicle confidence reported (0..1)"}
    )
    iou_threshold: float = field(
        default=0.45, metadata={"help": "yolop: NMS overlap above which boxes merge (0..1)"}
    )

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        self.input_height_width()
        for name in ("confidence_threshold", "iou_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.model != "twinlitenet":
            return
        path = self.weights_path()
        if not path.is_file():
            given = "" if self.weights else " (the default)"
            raise ValueError(
                f"weights: no file at {str(path)!r}{given}, resolved to {str(path.resolve())!r}; "
                "pass --weights PATH to twinlitenet_best.pth from the TwinLiteNet project (MIT)"
            )

    def weights_path(self) -> Path:
        """TwinLiteNet's weights file: ``weights``, else the default location."""
        return Path(self.weights or DEFAULT_WEIGHTS)

    def input_height_width(self) -> tuple[int, int]:
        """``input_size`` as (height, width)."""
        width, sep, height = self.input_size.lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit()):
            raise ValueError(
                f"input_size must be WIDTHxHEIGHT, e.g. 640x384, got {self.input_size!r}"
            )
        size = int(height), int(width)
        if min(size) < 32 or size[0] % 32 or size[1] % 32:
            raise ValueError(f"input_size must be multiples of 32, got {self.input_size!r}")
        return size


def build(config: RunConfig, options: Options) -> PipelineSpec:
    """One model stage, batched by ``config.batch_policy``, with the run's speed options."""
    stage: TwinLiteNetSegmentation | YolopPerception
    if options.model == "twinlitenet":
        stage = TwinLiteNetSegmentation(
            weights=options.weights_path(),
            batch_policy=config.batch_policy,
            half=config.half,
            channels_last=config.channels_last,
            cuda_graphs=config.cuda_graphs,
            compile_mode=config.compile_mode,
        )
    else:
        stage = YolopPerception(
            network=options.model,
            hub_repo=options.hub_repo,
            input_size=options.input_height_width(),
            confidence_threshold=options.confidence_threshold,
            iou_threshold=options.iou_threshold,
            batch_policy=config.batch_policy,
            half=config.half,
            channels_last=config.channels_last,
            cuda_graphs=config.cuda_graphs,
            compile_mode=config.compile_mode,
        )
    return PipelineSpec(
        stages=[stage],
        annotation=AnnotationStyle(
            keypoints=False, mask_only_labels=frozenset({DRIVABLE_AREA, LANE_LINE})
        ),
    )
