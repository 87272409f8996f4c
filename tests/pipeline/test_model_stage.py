from __future__ import annotations

import pytest
import torch

from torchstream.pipeline import to_host


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
