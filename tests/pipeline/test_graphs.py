"""CudaGraphs: replay per input shape, eager past the limit (GPU only)."""

from __future__ import annotations

import pytest
import torch

from torchstream.pipeline import CudaGraphs


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_shapes must be >= 1, got 0"):
        CudaGraphs(max_shapes=0)
    with pytest.raises(ValueError, match="need a CUDA batch"):
        CudaGraphs()(lambda x: x, torch.zeros(2))


@pytest.mark.gpu
def test_replays_per_shape_and_runs_eagerly_past_the_limit() -> None:
    weight = torch.randn(16, 16, device="cuda")
    calls = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(batch.shape))
        return torch.relu(batch @ weight)

    graphs = CudaGraphs(max_shapes=2)
    with torch.inference_mode():
        for rows in (4, 4, 8, 4, 8, 2):
            batch = torch.randn(rows, 16, device="cuda")
            out = graphs(forward, batch)
            torch.testing.assert_close(out, torch.relu(batch @ weight))
    assert graphs.shapes == [(4, 16), (8, 16)] and graphs.eager_batches == 1
    # Python ran for the captures (2 warm-ups + 1 capture per shape) and the eager batch only.
    assert calls.count((4, 16)) == 3 and calls.count((8, 16)) == 3 and calls.count((2, 16)) == 1


@pytest.mark.gpu
def test_outputs_are_the_graphs_own_tensors() -> None:
    graphs = CudaGraphs()
    with torch.inference_mode():
        first = graphs(lambda x: x * 2, torch.ones(3, device="cuda"))
        kept = first.clone()
        second = graphs(lambda x: x * 2, torch.full((3,), 5.0, device="cuda"))
    assert second is first  # overwritten by the next replay: read before the next call
    assert kept.tolist() == [2.0, 2.0, 2.0] and second.tolist() == [10.0, 10.0, 10.0]


@pytest.mark.gpu
def test_a_forward_pass_that_cannot_be_captured_runs_eagerly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def forward(batch: torch.Tensor) -> torch.Tensor:
        return batch + torch.tensor([1.0]).to(batch.device)  # a host copy: not capturable

    graphs = CudaGraphs()
    with torch.inference_mode():
        for _ in range(2):
            out = graphs(forward, torch.zeros(3, device="cuda"))
            assert out.tolist() == [1.0, 1.0, 1.0]
    assert graphs.shapes == [] and graphs.eager_batches == 2
    assert "cannot capture the forward pass" in caplog.text
