"""The driving sample's YOLOP models: our architecture (``yolop-arch``) and the TorchHub model
(``yolop``), the latter through a local hub folder with a stand-in of the same outputs."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tests.samples._yolop_hub import make_hub

from torchstream import decode_json
from torchstream._spec import RunConfig
from torchstream.cli import main
from torchstream.frame import Frame
from torchstream.models import HubError, load_hub_model
from torchstream.samples.driving import (
    DRIVABLE_AREA,
    LANE_LINE,
    VEHICLE,
    YOLOP,
    Options,
    YolopPerception,
    build,
)
from torchstream.samples.driving._yolop import fuse_batch_norms

RED, GREEN, WHITE = (230, 20, 20), (20, 220, 20), (250, 250, 250)


def _scene(height: int, width: int, device: str = "cpu") -> torch.Tensor:
    """Grey; the bottom third green (the road); a white vertical line (a lane marking) from
    40 % of the height down, at 30 % of the width; a red car at 45-60 % of the width, 40-65 %
    of the height."""
    picture = torch.full((height, width, 3), 90, dtype=torch.uint8)
    picture[int(height * 2 / 3) :] = torch.tensor(GREEN, dtype=torch.uint8)
    line = int(width * 0.3)
    picture[int(height * 0.4) :, line : line + max(4, width // 80)] = torch.tensor(
        WHITE, dtype=torch.uint8
    )
    picture[int(height * 0.4) : int(height * 0.65), int(width * 0.45) : int(width * 0.6)] = (
        torch.tensor(RED, dtype=torch.uint8)
    )
    return picture.to(device)


def _car_box(height: int, width: int) -> list[float]:
    return [int(width * 0.45), int(height * 0.4), int(width * 0.6), int(height * 0.65)]


def _frame(surface: torch.Tensor, source_id: str) -> Frame:
    frame = Frame(
        source_id=source_id, seq=0, width=int(surface.shape[1]), height=int(surface.shape[0])
    )
    frame.surface = surface
    return frame


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hub(tmp_path_factory.mktemp("hub") / "yolop")


def test_our_architecture_has_yolops_size_and_outputs() -> None:
    net = YOLOP().eval()
    # The paper's 7.9 M parameters: CSPDarknet encoder, PAN detection neck, two seg heads.
    assert sum(p.numel() for p in net.parameters()) == 7_940_846
    with torch.inference_mode():
        (detections, raw), drivable, lanes = net(torch.rand(2, 3, 384, 640))
    # 3 anchors per cell at 1/8, 1/16, 1/32 of 640x384: 3 * (80*48 + 40*24 + 20*12) rows.
    assert detections.shape == (2, 15_120, 6)
    assert [tuple(m.shape) for m in raw] == [
        (2, 3, 48, 80, 6),
        (2, 3, 24, 40, 6),
        (2, 3, 12, 20, 6),
    ]
    assert drivable.shape == lanes.shape == (2, 2, 384, 640)
    assert float(drivable.min()) >= 0 and float(drivable.max()) <= 1  # after the sigmoid
    assert float(detections[..., 2:4].min()) >= 0  # widths and heights
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.rand(1, 3, 360, 640))


def test_folding_batch_norms_keeps_the_function() -> None:
    torch.manual_seed(1)
    net = YOLOP().eval()
    for module in net.modules():  # non-trivial statistics, so folding has work to do
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    batch = torch.rand(1, 3, 128, 192)
    with torch.inference_mode():
        before = net(batch)
        after = fuse_batch_norms(net)(batch)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.drivable[0].modules())
    torch.testing.assert_close(after[0][0], before[0][0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(after[1], before[1], rtol=1e-4, atol=1e-4)


def test_the_hub_model_finds_the_vehicle_and_both_regions(hub: Path) -> None:
    stage = YolopPerception(network="yolop", hub_repo=str(hub))
    stage.setup(torch.device("cpu"))
    # A 16:9 frame (padded top and bottom in 640x384) and a square one, in one batch.
    wide, square = _frame(_scene(720, 1280), "wide"), _frame(_scene(600, 600), "square")
    stage.process([wide, square])
    for frame, mask_size in ((wide, (360, 640)), (square, (384, 384))):
        labels = [o.label for o in frame.objects]
        assert labels == [VEHICLE, DRIVABLE_AREA, LANE_LINE], labels  # the duplicate is gone
        car = frame.objects[0]
        expected = _car_box(frame.height, frame.width)
        tolerance = 1.5 * frame.width / 640  # a pixel of the network's input, and rounding
        assert np.allclose(car.box, expected, atol=tolerance), (car.box, expected)
        assert car.confidence == pytest.approx(0.9 * 0.95, abs=1e-3)
        for obj in frame.objects[1:]:
            assert obj.mask is not None and (obj.mask.height, obj.mask.width) == mask_size
            assert obj.box == [0.0, 0.0, float(frame.width), float(frame.height)]
            assert obj.confidence == pytest.approx(0.95, abs=1e-3)
        road = frame.objects[1].mask.to_tensor()  # type: ignore[union-attr]
        rows = road.any(dim=1).nonzero()
        assert (
            abs(int(rows.min()) - mask_size[0] * 2 / 3) <= 1 and int(rows.max()) == mask_size[0] - 1
        )
        assert road[-1].float().mean() > 0.95  # all but the lane marking crossing it
        lanes = frame.objects[2].mask.to_tensor()  # type: ignore[union-attr]
        columns = lanes.any(dim=0).nonzero().flatten()
        assert abs(int(columns.min()) - 0.3 * mask_size[1]) <= 1.5
        assert not lanes[: int(mask_size[0] * 0.38)].any()
        assert "driving.random_weights" not in frame.attributes


def test_nothing_found_still_gives_both_regions(hub: Path) -> None:
    stage = YolopPerception(network="yolop", hub_repo=str(hub))
    stage.setup(torch.device("cpu"))
    frame = _frame(torch.full((360, 640, 3), 90, dtype=torch.uint8), "empty")
    stage.process([frame])
    assert [o.label for o in frame.objects] == [DRIVABLE_AREA, LANE_LINE]
    assert all(o.mask is not None and o.mask.counts == [360 * 640] for o in frame.objects)
    assert all(o.confidence == 0.0 for o in frame.objects)


def test_random_weights_say_so(hub: Path) -> None:
    stage = YolopPerception(network="yolop-arch", input_size=(128, 192))
    stage.setup(torch.device("cpu"))
    frame = _frame(_scene(180, 320), "cam")
    stage.process([frame])
    assert frame.attributes["driving.random_weights"] is True
    assert [o.label for o in frame.objects][-2:] == [DRIVABLE_AREA, LANE_LINE]
    again = YolopPerception(network="yolop-arch", input_size=(128, 192))
    again.setup(torch.device("cpu"))
    twin = _frame(_scene(180, 320), "cam")
    again.process([twin])
    assert twin.objects == frame.objects  # seeded: the same random network every time


def test_hub_errors_say_what_to_do(
    tmp_path: Path, hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(HubError, match=r"has no hubconf.py"):
        load_hub_model(str(tmp_path), "yolop")
    with pytest.raises(HubError, match=r"cannot load 'yolox'.*Offline"):
        load_hub_model(str(hub), "yolox")

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load", offline)
    with pytest.raises(HubError, match=r"'hustvl/yolop'.*name resolution.*Clone the repository"):
        load_hub_model("hustvl/yolop", "yolop", pretrained=True)


def test_options_are_checked() -> None:
    assert Options(model="yolop-arch", input_size="640x384").input_height_width() == (384, 640)
    with pytest.raises(ValueError, match="input_size must be WIDTHxHEIGHT"):
        Options(model="yolop-arch", input_size="640")
    with pytest.raises(ValueError, match="multiples of 32"):
        Options(model="yolop-arch", input_size="640x360")
    with pytest.raises(ValueError, match="confidence_threshold"):
        Options(model="yolop", confidence_threshold=1.5)
    spec = build(RunConfig(half=True, channels_last=True), Options(model="yolop-arch"))
    (stage,) = spec.stages
    assert isinstance(stage, YolopPerception) and stage.network == "yolop-arch"
    assert stage.half and stage.channels_last and not stage.cuda_graphs


def _scene_video(path: Path, frames: int) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = 320, 192, "yuv420p"  # type: ignore[union-attr]
        picture = _scene(192, 320).numpy()
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            for packet in stream.encode(frame):  # type: ignore[union-attr]
                container.mux(packet)
        for packet in stream.encode():  # type: ignore[union-attr]
            container.mux(packet)
    return path


@pytest.mark.parametrize("model", ["yolop", "yolop-arch"])
def test_cli_runs_both_yolop_models(tmp_path: Path, hub: Path, model: str) -> None:
    clip = _scene_video(tmp_path / "scene.mp4", 3)
    meta, video = tmp_path / "out.jsonl", tmp_path / "out.mp4"
    result = CliRunner().invoke(
        main,
        [
            "run",
            "driving",
            "--model",
            model,
            "--hub-repo",
            str(hub),
            "--input",
            str(clip),
            "--meta",
            str(meta),
            "--output",
            str(video),
            "--batch-size",
            "3",
            "--quiet",
            "--channels-last",
        ],
    )
    assert result.exit_code == 0, result.output
    frames = [decode_json(line) for line in meta.read_bytes().splitlines()]
    assert len(frames) == 3
    for frame in frames:
        labels = [o.label for o in frame.objects]
        assert labels[-2:] == [DRIVABLE_AREA, LANE_LINE]
        if model == "yolop":
            assert labels == [VEHICLE, DRIVABLE_AREA, LANE_LINE]
            assert np.allclose(frame.objects[0].box, _car_box(192, 320), atol=2)
        else:
            assert frame.attributes["driving.random_weights"] is True
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3


def test_cli_help_lists_the_models() -> None:
    result = CliRunner().invoke(main, ["run", "driving", "--help"])
    assert result.exit_code == 0
    assert "twinlitenet|yolop|yolop-arch" in result.output and "--hub-repo" in result.output
    assert "--cuda-graphs" in result.output and "--compile" in result.output


@pytest.mark.gpu
def test_speed_options_on_cuda_give_the_same_results(hub: Path) -> None:
    surfaces = [_scene(1080, 1920, "cuda"), _scene(720, 1280, "cuda")]
    results = []
    for options in (
        {},
        {"half": True, "channels_last": True},
        {"half": True, "channels_last": True, "cuda_graphs": True},
    ):
        stage = YolopPerception(network="yolop", hub_repo=str(hub), **options)  # type: ignore[arg-type]
        stage.setup(torch.device("cuda"))
        for _ in range(3):  # graphs: capture, then replays
            frames = [_frame(s, f"cam{i}") for i, s in enumerate(surfaces)]
            stage.process(frames)
        results.append(frames)
    reference = results[0]
    for frames in results[1:]:
        for got, expected in zip(frames, reference, strict=True):
            assert [o.label for o in got.objects] == [o.label for o in expected.objects]
            assert np.allclose(got.objects[0].box, expected.objects[0].box, atol=2)
            for mine, theirs in zip(got.objects[1:], expected.objects[1:], strict=True):
                agree = (mine.mask.to_tensor() == theirs.mask.to_tensor()).float().mean()  # type: ignore[union-attr]
                assert agree > 0.995


@pytest.mark.gpu
def test_yolop_arch_in_half_precision_with_graphs_matches_float32() -> None:
    net = fuse_batch_norms(YOLOP().eval()).cuda()
    batch = torch.rand(4, 3, 384, 640, device="cuda")
    with torch.inference_mode():
        reference = net(batch)
        fast = net.half().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        outputs = fast(batch.half())
    torch.testing.assert_close(outputs[1].float(), reference[1], atol=0.02, rtol=0.02)
    torch.testing.assert_close(outputs[0][0].float(), reference[0][0], atol=0.5, rtol=0.02)
