from __future__ import annotations

from collections.abc import Iterator, Sequence
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
    for count in (3, 4, 1, 4):  # every batch padded to 4 rows: one graph, replayed
        expected, got = _frames("cuda", count), _frames("cuda", count)
        eager.process(expected)
        graphed.process(got)
        for a, b in zip(expected, got, strict=True):
            assert a.attributes["out"] == pytest.approx(b.attributes["out"], abs=1e-5)
    assert graphed._graphs is not None and graphed._graphs.shapes == [(4, 3, 32, 48)]


class _Sums(ModelStage):
    """Postprocess without host synchronisation; finalize with one (a data-dependent size)."""

    input_size = (8, 8)

    def load_model(self) -> torch.nn.Module:
        return torch.nn.Identity()

    def postprocess(self, outputs: torch.Tensor, crops: Sequence[Crop]) -> list[torch.Tensor]:
        return [outputs[row] for row in range(len(crops))]  # views of the outputs

    def finalize(self, results: list[torch.Tensor], crops: Sequence[Crop]) -> list[torch.Tensor]:
        return [(result > 0.5).nonzero() for result in results]

    def attach(self, crop: Crop, result: torch.Tensor) -> None:
        crop.frame.attributes["bright"] = len(result)


def _bright_frames(device: str, count: int) -> list[Frame]:
    frames = []
    for index in range(count):
        frame = Frame(source_id="cam", seq=index, width=8, height=8)
        surface = torch.zeros(8, 8, 3, dtype=torch.uint8)
        surface.view(-1, 3)[: 3 * (index + 1)] = 255  # frame i has 3 * (i + 1) white pixels
        frame.surface = surface.to(device)
        frames.append(frame)
    return frames


class _Listed:
    """A source of ready-made frames."""

    source_id = "cam"
    policy = "block"

    def __init__(self, frames: list[Frame]) -> None:
        self._frames = frames

    def open(self) -> None:
        pass

    def frames(self) -> Iterator[Frame]:
        yield from self._frames

    def close(self) -> None:
        pass


@pytest.mark.parametrize("graphs", [False, pytest.param(True, marks=pytest.mark.gpu)])
def test_a_split_stage_gives_what_the_whole_stage_gives(device: str, graphs: bool) -> None:
    from torchstream import Pipeline
    from torchstream.sinks import CallbackSink

    if graphs and device != "cuda":
        pytest.skip("CUDA graphs need CUDA")
    policy = BatchPolicy(max_size=4, max_wait_seconds=0.05, pad_to_max_size=graphs)
    whole, split = _Sums(batch_policy=policy), _Sums(batch_policy=policy, cuda_graphs=graphs)
    first, second = split.split()
    assert (first.name, second.name) == ("model", "model.results")
    results: dict[str, list[int]] = {"whole": [], "split": []}
    for name, stages in (("whole", [whole]), ("split", [first, second])):
        frames = _bright_frames(device, 10)
        sink = CallbackSink(lambda f, name=name: results[name].append(f.attributes["bright"]))
        with Pipeline(stages, [sink], device=device) as pipeline:  # type: ignore[arg-type]
            pipeline.add_source(_Listed(frames))
            pipeline.wait()
        assert all("_model_results" not in f.__dict__ for f in frames)
    # 3 channels of 3 * (i + 1) white pixels, in order
    assert results["whole"] == results["split"] == [9 * (i + 1) for i in range(10)]


def test_the_second_half_alone_says_what_is_missing() -> None:
    _, second = _Sums().split()
    with pytest.raises(RuntimeError, match=r"has no results of stage 'model'.*next to each other"):
        second.process(_bright_frames("cpu", 1))
