"""Driving perception on dashcam video: drivable area and lane lines (issue 4).

``torchstream run driving --input dashcam.mp4 --output annotated.mp4 --meta out.jsonl``

One model is available now, chosen with ``--model``:

- ``twinlitenet`` (the default): TwinLiteNet (Quang-Huy Che et al., 2023, arXiv:2307.10705),
  a 0.44 M-parameter segmentation network trained on BDD100K, as one batched stage
  (:class:`TwinLiteNetSegmentation`). The network is our own definition; its trained weights
  (``twinlitenet_best.pth``, MIT licence, from the TwinLiteNet project) are a file you pass
  with ``--weights``.

YOLOP (``yolop``, with its trained weights, and ``yolop-arch``, the architecture alone) come
next and will also detect vehicles.

Metadata: every frame gets two objects, whatever is found.

- ``"drivable_area"``: the road surface the car may drive on (the ego lane and the lanes
  beside it);
- ``"lane_line"``: the painted lane markings.

Each carries its ``mask`` (run-length encoded, at the network's resolution: 640x360 for a
16:9 frame), stretched over its ``box``, which is the whole frame; ``confidence`` is the
network's mean probability over the mask's pixels. Masks, not frame attributes, because the
annotated video and every metadata consumer already know how to read an object's mask.

The annotated video blends the drivable area and the lane lines in two distinct colours;
boxes and labels are not drawn (each would outline the whole frame).

Rule of thumb: on a 2-core CPU the 221 frames of a 960x540 dashcam clip run at about 3
frames/s in batches of 4 (0.3-0.4 s per frame in the network, about a quarter of it in the
position attention over the 3600 positions of its 1/8 map).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torchstream._draw import AnnotationStyle
from torchstream._spec import PipelineSpec, RunConfig
from torchstream.samples.driving._stages import (
    DRIVABLE_AREA,
    LANE_LINE,
    TwinLiteNetSegmentation,
)

__all__ = ["DRIVABLE_AREA", "LANE_LINE", "Options", "TwinLiteNetSegmentation", "build"]

Model = Literal["twinlitenet"]
MODELS: tuple[Model, ...] = ("twinlitenet",)

DEFAULT_WEIGHTS: dict[Model, str] = {
    "twinlitenet": "../shared/assets/driving/twinlitenet_best.pth",
}
"""Where each model's weights are looked for when ``weights`` is empty, relative to the
working directory: the shared assets folder beside a development checkout."""

_WEIGHTS_SOURCE: dict[Model, str] = {
    "twinlitenet": "twinlitenet_best.pth from the TwinLiteNet project (MIT)",
}


@dataclass(frozen=True)
class Options:
    """The sample's settings; each field is a ``--option-name`` flag of ``torchstream run``.

    Raises ValueError (a usage error on the command line) for an unknown model or a weights
    file that does not exist, naming the option.
    """

    model: Model = field(
        default="twinlitenet", metadata={"help": "the network (yolop and yolop-arch come next)"}
    )
    weights: str = field(
        default="",
        metadata={
            "help": "trained state dict of the model (empty: the model's file in "
            "../shared/assets/driving/, from the working directory)"
        },
    )

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        path = self.weights_path()
        if not path.is_file():
            given = "" if self.weights else " (the default)"
            raise ValueError(
                f"weights: no file at {str(path)!r}{given}, resolved to {str(path.resolve())!r}; "
                f"pass --weights PATH to {_WEIGHTS_SOURCE[self.model]}"
            )

    def weights_path(self) -> Path:
        """The weights file: ``weights``, else the model's default location."""
        return Path(self.weights or DEFAULT_WEIGHTS[self.model])


def build(config: RunConfig, options: Options) -> PipelineSpec:
    """One stage, batched by ``config.batch_policy``, in half precision with ``config.half``
    on CUDA."""
    stage = TwinLiteNetSegmentation(
        weights=options.weights_path(),
        batch_policy=config.batch_policy,
        half=config.half,
    )
    return PipelineSpec(
        stages=[stage],
        annotation=AnnotationStyle(boxes=False, labels=False, keypoints=False),
    )
