from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import pytest
import torch

from torchstream.frame import Frame
from torchstream.pipeline import BatchPolicy, Crop, ModelStage, to_host


def test_to_host_keeps_structure_and_values(device: str) -> None:
    gen = torch.Generator().manual_seed(7)
    a = torch.rand(3, 4, generator=gen)
    b = torch.arange(5)
    c = torch.rand(2, 2, generator=gen)
    value = {"a": [a.to(device), (b.to(device), "label")], "c": c.to(device), "n": 3, "e": None}
    host = to_host(value)
    assert host["n"] == 3 and host["e"] is None and host["a"][1][1] == "label"
    assert host["a"][0].device.type == "cpu" and torch.equal(host["a"][0], a)
    assert torch.equal(host["a"][1][0], b) and torch.equal(host["c"], c)
    assert to_host([]) == [] and to_host("x") == "x"


def test_to_host_handles_empty_and_scalar_tensors(device: str) -> None:
    empty, scalar = torch.zeros(0, 4).to(device), torch.tensor(2.5).to(device)
    host = to_host([empty, scalar])
    assert host[0].shape == (0, 4) and host[1].item() == pytest.approx(2.5)


class _Pair(NamedTuple):
    values: torch.Tensor
    name: str


def test_to_host_moves_a_shared_tensor_once_and_keeps_named_tuples(device: str) -> None:
    shared = torch.arange(6).to(device)
    host = to_host([_Pair(shared, "a"), _Pair(shared, "b")])
    assert [type(item) for item in host] == [_Pair, _Pair]
    assert [item.name for item in host] == ["a", "b"]
    assert host[0].values is host[1].values  # one copy, not one per reference
    assert torch.equal(host[0].values, torch.arange(6))


def test_to_host_can_give_numpy_arrays(device: str) -> None:
    import numpy as np

    shared, local = torch.arange(6).to(device), torch.ones(2)
    host = to_host([_Pair(shared, "a"), _Pair(shared, "b"), {"x": local}], as_numpy=True)
    assert isinstance(host[0].values, np.ndarray) and host[0].values is host[1].values
    assert host[0].values.tolist() == list(range(6))
    assert isinstance(host[2]["x"], np.ndarray) and host[2]["x"].tolist() == [1.0, 1.0]


def test_speed_options_are_checked() -> None:
    with pytest.raises(ValueError, match="compile_mode must be one of default, reduce-overhead"):
        ModelStage(compile_mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compile_mode='reduce-overhead' do not go together"):
        ModelStage(cuda_graphs=True, compile_mode="reduce-overhead")
    ModelStage(cuda_graphs=True, compile_mode="default")  # the compiled model is captured


class _Convs(ModelStage):
    input_size = (32, 48)

    def load_model(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)
        )

    def postprocess(self, outputs: torch.Tensor, crops: Sequence[Crop]) -> list[torch.Tensor]:
        return list(outputs[: len(crops)].mean(dim=(2, 3)))

    def attach(self, crop: Crop, result: torch.Tensor) -> None:
        crop.frame.attributes["out"] = result.tolist()


def _frames(device: str, count: int) -> list[Frame]:
    frames = []
    for index in range(count):
        frame = Frame(source_id=f"s{index}", seq=0, width=64, height=48)
        generator = torch.Generator().manual_seed(index)
        frame.surface = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8, generator=generator)
        frame.surface = frame.surface.to(device)
        frames.append(frame)
    return frames


def test_channels_last_computes_the_same(device: str) -> None:
    results = []
    for channels_last in (False, True):
        stage = _Convs(channels_last=channels_last)
        stage.setup(torch.device(device))
        frames = _frames(device, 3)
        stage.process(frames)
        results.append([f.attributes["out"] for f in frames])
    torch.testing.assert_close(torch.tensor(results[1]), torch.tensor(results[0]))


@pytest.mark.gpu
def test_cuda_graphs_give_what_eager_gives_on_every_batch() -> None:
    eager = _Convs()
    eager.setup(torch.device("cuda"))
    graphed = _Convs(cuda_graphs=True, batch_policy=BatchPolicy(max_size=4, pad_to_max_size=True))
    graphed.setup(torch.device("cuda"))
    # Captured at set-up (a padded batch of one black frame), before any source runs.
    assert graphed._graphs is not None and graphed._graphs.shapes == [(4, 3, 32, 48)]
    for count in (3, 4, 1, 4):  # every batch padded to 4 rows: one graph, replayed
        expected, got = _frames("cuda", count), _frames("cuda", count)
        eager.process(expected)
        graphed.process(got)
        for a, b in zip(expected, got, strict=True):
            assert a.attributes["out"] == pytest.approx(b.attributes["out"], abs=1e-5)
    assert graphed._graphs is not None and graphed._graphs.shapes == [(4, 3, 32, 48)]


@pytest.mark.gpu
def test_a_stage_whose_warm_up_fails_still_captures_at_its_first_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Picky(_Convs):
        def select(self, frame: Frame) -> list[Crop]:
            if frame.source_id == "torchstream.warm-up":
                raise ValueError("no such camera")
            return super().select(frame)

    stage = Picky(cuda_graphs=True, batch_policy=BatchPolicy(max_size=4, pad_to_max_size=True))
    stage.setup(torch.device("cuda"))
    assert "no CUDA graph captured at start" in caplog.text and "no such camera" in caplog.text
    assert stage._graphs is not None and stage._graphs.shapes == []
    stage.process(_frames("cuda", 2))
    assert stage._graphs.shapes == [(4, 3, 32, 48)]
