"""Replaying a model's forward pass as a CUDA graph, one graph per input shape."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CudaGraphs"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class _Captured:
    graph: torch.cuda.CUDAGraph
    input: torch.Tensor
    output: Any


class CudaGraphs:
    """Runs ``forward(batch)`` by replaying a CUDA graph captured for the batch's shape.

    The first batch of each (shape, dtype, device) is run twice on a side stream (kernels
    choose their algorithms, the allocator warms up), then captured; every later batch of
    that shape is copied into the graph's input and replayed: one launch for the whole
    model, instead of one per layer, so the host no longer paces small-batch inference.
    Graphs of all shapes share one memory pool. Past ``max_shapes`` shapes, batches run
    eagerly (``eager_batches`` counts them): fix the shapes with
    ``BatchPolicy(pad_to_max_size=True)``. A forward pass that cannot be captured (it copies
    from the host or synchronises) is logged once as a warning and runs eagerly.

    The returned outputs are the graph's own tensors, overwritten by the next replay: read
    them (postprocess, copy to the host) before the next call. One caller thread at a time.
    ``forward`` must be capturable: no host synchronisation, no data-dependent shapes, no
    CPU tensors created inside.
    """

    def __init__(self, *, max_shapes: int = 4) -> None:
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
        self.max_shapes = max_shapes
        self.eager_batches = 0
        self._captured: dict[tuple[Any, ...], _Captured] = {}
        self._uncapturable: set[tuple[Any, ...]] = set()
        self._pool: Any = None

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The input shapes captured so far."""
        return [key[0] for key in self._captured]

    def __call__(self, forward: Callable[[torch.Tensor], Any], batch: torch.Tensor) -> Any:
        if batch.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA batch, got one on {batch.device}")
        key = (tuple(batch.shape), batch.dtype, batch.device, batch.stride())
        captured = self._captured.get(key)
        if captured is None:
            if len(self._captured) >= self.max_shapes or key in self._uncapturable:
                self.eager_batches += 1
                return forward(batch)
            try:
                captured = self._capture(forward, batch)
            except Exception as exc:  # the model, not the batch, is at fault
                # A forward pass that synchronises or copies from the host cannot be captured;
                # it still works eagerly, so the batch (and the next ones) run that way.
                self._uncapturable.add(key)
                logger.warning(
                    "cannot capture the forward pass as a CUDA graph (%r); running it eagerly",
                    exc,
                )
                self.eager_batches += 1
                return forward(batch)
            self._captured[key] = captured
        captured.input.copy_(batch)
        captured.graph.replay()
        return captured.output

    def _capture(self, forward: Callable[[torch.Tensor], Any], batch: torch.Tensor) -> _Captured:
        static = batch.clone()
        current = torch.cuda.current_stream(batch.device)
        side = torch.cuda.Stream(device=batch.device)  # type: ignore[no-untyped-call]
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(2):
                forward(static)
        current.wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the capture must not make other threads' CUDA calls fail (NVDEC
        # decoders of the same process run on, and error out under the default "global").
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            output = forward(static)
        logger.info("captured a CUDA graph for input %s %s", tuple(batch.shape), batch.dtype)
        return _Captured(graph=graph, input=static, output=output)
