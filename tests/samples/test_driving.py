"""The driving sample: our TwinLiteNet with its real trained weights, on real dashcam stills.

The weights and stills are shared assets at ``../shared/assets/driving`` beside the
repository (CI has them, a fresh clone does not: then these tests skip).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from torchstream import decode_json, encode_json
from torchstream._spec import RunConfig
from torchstream.cli import main
from torchstream.codecs import decode_image
from torchstream.frame import Frame
from torchstream.samples.driving import (
    DRIVABLE_AREA,
    LANE_LINE,
    Options,
    TwinLiteNetSegmentation,
    build,
)
from torchstream.samples.driving._twinlitenet import TwinLiteNet, load_twinlitenet

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT.parent / "shared" / "assets" / "driving"
if not ASSETS.is_dir():  # the GPU machine gets the files in the GPU pack (scripts/gpu-check.sh)
    ASSETS = ROOT / ".gpu-pack"
WEIGHTS = ASSETS / "twinlitenet_best.pth"
STILL = ASSETS / "solidWhiteRight.jpg"

needs_weights = pytest.mark.skipif(
    not WEIGHTS.is_file(),
    reason=f"TwinLiteNet weights absent: {WEIGHTS} (shared assets beside the repository)",
)
needs_still = pytest.mark.skipif(
    not (WEIGHTS.is_file() and STILL.is_file()),
    reason=f"TwinLiteNet weights or dashcam still absent under {ASSETS}",
)

# Read off solidWhiteRight.jpg (960x540, highway, ego lane in the middle) and its masks saved
# as images: the road fills the bottom of the picture (99.8 % of the bottom-centre block
# below), the horizon is at 0.55 of the height; at 0.8-0.95 of the height the left dashed
# line is at 0.19-0.33 of the width, the right solid line at 0.69-0.84, and nothing is
# painted in the middle of the ego lane.
_BOTTOM_CENTRE = (slice(0.75, 1.0), slice(0.35, 0.65))
_NEAR_ROWS = slice(0.8, 0.95)


def _frame(surface: torch.Tensor, source_id: str = "still") -> Frame:
    frame = Frame(
        source_id=source_id, seq=0, width=int(surface.shape[1]), height=int(surface.shape[0])
    )
    frame.surface = surface
    return frame


def _part(mask: torch.Tensor, rows: slice, columns: slice) -> torch.Tensor:
    """The block of ``mask`` between fractions of its height and width."""
    height, width = mask.shape
    return mask[
        int(rows.start * height) : int(rows.stop * height),
        int(columns.start * width) : int(columns.stop * width),
    ]


def _masks(frame: Frame) -> dict[str, torch.Tensor]:
    result = {}
    for obj in frame.objects:
        assert obj.mask is not None
        result[obj.label] = obj.mask.to_tensor()
    return result


@pytest.fixture(scope="module")
def still() -> torch.Tensor:
    if not STILL.is_file():
        pytest.skip(f"dashcam still absent: {STILL}")
    surface, _ = decode_image(STILL.read_bytes(), source_id=STILL.name)
    return surface


@pytest.fixture(scope="module")
def stage() -> TwinLiteNetSegmentation:
    if not WEIGHTS.is_file():
        pytest.skip(f"TwinLiteNet weights absent: {WEIGHTS}")
    result = TwinLiteNetSegmentation(weights=WEIGHTS)
    result.setup(torch.device("cpu"))
    return result


@pytest.fixture(scope="module")
def segmented(stage: TwinLiteNetSegmentation, still: torch.Tensor) -> Frame:
    frame = _frame(still)
    stage.process([frame])
    return frame


@needs_weights
def test_every_key_of_the_trained_weights_loads_strictly() -> None:
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert len(state) == 183 and all(key.startswith("module.") for key in state)
    net = TwinLiteNet()
    assert set(net.state_dict()) == {key.removeprefix("module.") for key in state}
    loaded = load_twinlitenet(WEIGHTS)
    # 441,753 numbers in the state dict: 439,633 learnt parameters, the rest batch-norm
    # running statistics (and 20 batch counters).
    assert sum(t.numel() for t in loaded.state_dict().values()) == 441_753
    assert sum(p.numel() for p in loaded.parameters()) == 439_633
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[f"module.{key}"]), key


def test_the_network_keeps_the_input_size_and_checks_it() -> None:
    net = TwinLiteNet().eval()
    with torch.inference_mode():
        drivable, lanes = net(torch.rand(2, 3, 48, 80))
    assert drivable.shape == lanes.shape == (2, 2, 48, 80)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 3, 50, 80))


@needs_still
def test_drivable_area_covers_the_road_ahead(segmented: Frame) -> None:
    assert [o.label for o in segmented.objects] == [DRIVABLE_AREA, LANE_LINE]
    drivable = segmented.objects[0]
    assert drivable.box == [0.0, 0.0, 960.0, 540.0]
    assert drivable.mask is not None and (drivable.mask.height, drivable.mask.width) == (360, 640)
    assert drivable.confidence > 0.8
    mask = _masks(segmented)[DRIVABLE_AREA]
    assert _part(mask, *_BOTTOM_CENTRE).float().mean() > 0.95
    assert not _part(mask, slice(0.0, 0.5), slice(0.0, 1.0)).any()  # sky and hills
    assert 0.2 < mask.float().mean() < 0.5


@needs_still
def test_lane_lines_follow_the_painted_lines(segmented: Frame) -> None:
    lanes = segmented.objects[1]
    assert lanes.box == [0.0, 0.0, 960.0, 540.0] and lanes.confidence > 0.7
    mask = _masks(segmented)[LANE_LINE]
    assert 0.005 < mask.float().mean() < 0.06  # thin lines, not regions
    assert not _part(mask, slice(0.0, 0.5), slice(0.0, 1.0)).any()
    assert _part(mask, _NEAR_ROWS, slice(0.1, 0.4)).sum() > 100  # left dashed line
    assert _part(mask, _NEAR_ROWS, slice(0.6, 0.9)).sum() > 100  # right solid line
    assert not _part(mask, _NEAR_ROWS, slice(0.4, 0.6)).any()  # inside the ego lane


@needs_still
def test_letterbox_padding_is_cropped_and_batches_agree(
    stage: TwinLiteNetSegmentation, still: torch.Tensor, segmented: Frame
) -> None:
    # A 4:3 cut of the still (720x540) is padded left and right in the 16:9 input; its masks
    # cover only the content (480x360) and are computed in one batch with the whole still.
    cut = still[:, 120:840].contiguous()
    whole, narrow = _frame(still, "whole"), _frame(cut, "cut")
    stage.process([whole, narrow])
    for obj in narrow.objects:
        assert obj.mask is not None and (obj.mask.height, obj.mask.width) == (360, 480)
        assert obj.box == [0.0, 0.0, 720.0, 540.0]
    assert _part(_masks(narrow)[DRIVABLE_AREA], *_BOTTOM_CENTRE).float().mean() > 0.95
    alone, batched = _masks(segmented), _masks(whole)
    for label in (DRIVABLE_AREA, LANE_LINE):
        agree = (alone[label] == batched[label]).float().mean()
        assert agree > 0.999, (label, float(agree))


@needs_still
def test_masks_round_trip_through_json(segmented: Frame) -> None:
    again = decode_json(encode_json(segmented))
    assert again.objects == segmented.objects
    assert len(encode_json(segmented)) < 20_000  # run-length encoded: a few kB per frame


@needs_still
@pytest.mark.gpu
def test_half_precision_on_cuda_matches_the_cpu(still: torch.Tensor, segmented: Frame) -> None:
    stage = TwinLiteNetSegmentation(weights=WEIGHTS, half=True)
    stage.setup(torch.device("cuda"))
    frame = _frame(still.to("cuda"))
    stage.process([frame])
    on_cpu, on_cuda = _masks(segmented), _masks(frame)
    for label in (DRIVABLE_AREA, LANE_LINE):
        agree = (on_cpu[label] == on_cuda[label]).float().mean()
        assert agree > 0.995, (label, float(agree))


def test_a_missing_weights_file_names_the_option(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(ValueError, match=r"weights: no file at .*nowhere\.pth.*--weights PATH"):
        Options(weights=str(missing))
    with pytest.raises(ValueError, match="model must be one of twinlitenet, yolop, yolop-arch"):
        Options(model="yolox", weights=str(missing))  # type: ignore[arg-type]
    Options(model="yolop-arch", weights=str(missing))  # only TwinLiteNet reads weights
    result = CliRunner().invoke(
        main, ["run", "driving", "--input", "x.jpg", "--weights", str(missing)]
    )
    assert result.exit_code == 2 and "--weights PATH" in result.output


@needs_weights
def test_default_weights_are_the_shared_assets_beside_the_checkout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    options = Options()
    assert options.weights_path().resolve() == WEIGHTS.resolve()
    spec = build(RunConfig(), options)
    assert [type(s) for s in spec.stages] == [TwinLiteNetSegmentation]
    # Masks only for the two regions (their boxes are the whole frame); vehicles get boxes.
    assert spec.annotation.masks and spec.annotation.boxes
    assert spec.annotation.mask_only_labels == {DRIVABLE_AREA, LANE_LINE}


@needs_still
def test_cli_writes_masks_and_an_annotated_picture(tmp_path: Path) -> None:
    video, meta = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, [
        "run", "driving", "--input", str(STILL), "--weights", str(WEIGHTS),
        "--meta", str(meta), "--output", str(video), "--quiet",
    ])
    assert result.exit_code == 0, result.output
    (line,) = meta.read_bytes().splitlines()
    frame = decode_json(line)
    assert [o.label for o in frame.objects] == [DRIVABLE_AREA, LANE_LINE]
    drivable = _masks(frame)[DRIVABLE_AREA]
    assert _part(drivable, *_BOTTOM_CENTRE).float().mean() > 0.95

    import av

    with av.open(str(video)) as container:
        (picture,) = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    original, _ = decode_image(STILL.read_bytes(), source_id="still")
    drawn = torch.from_numpy(picture).float()
    # The road ahead is tinted (drivable-area colour blended at half opacity), the sky not.
    changed = (drawn - original.float()).abs().mean(dim=2)
    assert _part(changed, *_BOTTOM_CENTRE).mean() > 30
    assert _part(changed, slice(0.0, 0.3), slice(0.0, 1.0)).mean() < 8
