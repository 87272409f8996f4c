"""Frame surfaces are shared with NumPy and CuPy without copies (DLPack and
``__cuda_array_interface__``), as the README shows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchstream.testing import SyntheticSource


def first_frame_surface(device: str) -> torch.Tensor:
    frame = next(iter(SyntheticSource("cam", frames=1).frames()))
    assert frame.surface is not None
    return frame.surface.to(device)


def test_numpy_view_shares_memory() -> None:
    surface = first_frame_surface("cpu")
    view = np.from_dlpack(surface)
    assert view.shape == (240, 320, 3) and view.dtype == np.uint8
    assert view.__array_interface__["data"][0] == surface.data_ptr()
    assert np.shares_memory(view, surface.numpy())


@pytest.mark.gpu
def test_cupy_views_share_device_memory() -> None:
    cupy = pytest.importorskip("cupy", reason="pip install cupy-cuda12x (or cuda13x)")
    surface = first_frame_surface("cuda")
    by_dlpack = cupy.from_dlpack(surface)
    by_interface = cupy.asarray(surface)  # through __cuda_array_interface__
    for view in (by_dlpack, by_interface):
        assert view.data.ptr == surface.data_ptr()
        assert view.shape == (240, 320, 3)
    assert int(by_dlpack.sum()) == int(surface.sum())
