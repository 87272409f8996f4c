"""ModelStage: the six steps of running a model on frames, as overridable hooks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from torchstream.frame import Frame, ObjectMeta
from torchstream.pipeline._batcher import BatchPolicy
from torchstream.pipeline._graphs import CudaGraphs

__all__ = ["CompileMode", "Crop", "ModelStage", "to_host"]

log = logging.getLogger(__name__)

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
"""``torch.compile`` modes a model stage accepts."""
COMPILE_MODES: tuple[CompileMode, ...] = get_args(CompileMode)


@dataclass(frozen=True, eq=False)
class Crop:
    """An area of one frame that a model stage works on.

    ``box`` is ``(x1, y1, x2, y2)`` in frame pixels; ``object`` is the object the area came
    from (second-stage models), or None for the whole frame.
    """

    frame: Frame
    box: tuple[float, float, float, float]
    object: ObjectMeta | None = None

    @classmethod
    def whole(cls, frame: Frame) -> Crop:
        return cls(frame, (0.0, 0.0, float(frame.width), float(frame.height)))


def to_host(value: Any, *, as_numpy: bool = False) -> Any:
    """Copy every tensor in a nested list/tuple/dict to the host, with one synchronisation.

    Device tensors are gathered by dtype (a tensor that appears in many places moves once) and
    each group crosses the bus as one flat copy into pinned memory (``non_blocking=True``, on
    the current stream), then is split back into views: a batch of small results costs one
    transfer per dtype, not one per tensor. The current stream is synchronised once at the end:
    the only point where the host waits.

    ``as_numpy``: every tensor comes back as a NumPy array (a view of the host copy; a tensor
    shared by many results becomes one array). Host code that then reads the results touches
    no torch function, each of which hands the GIL over and back: per frame, in a busy
    process, that hand-over is what costs.
    """
    found: dict[int, torch.Tensor] = {}  # by id: a tensor shared by many results moves once

    def collect(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            if item.device.type != "cpu":
                found.setdefault(id(item), item)
        elif isinstance(item, (list, tuple)):
            for v in item:
                collect(v)
        elif isinstance(item, dict):
            for v in item.values():
                collect(v)

    collect(value)
    if not found and not as_numpy:
        return value
    copies: dict[int, Any] = {}
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in found.values():
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    cuda_seen = False
    for (dtype, device), tensors in groups.items():
        flat = torch.cat([t.reshape(-1) for t in tensors])
        if device.type == "cuda":
            cuda_seen = True
            host = torch.empty(flat.shape, dtype=dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
        else:
            host = flat.cpu()
        offset = 0
        for tensor in tensors:
            count = tensor.numel()
            copies[id(tensor)] = host[offset : offset + count].view(tensor.shape)
            offset += count
    if cuda_seen:
        torch.cuda.current_stream().synchronize()
    if as_numpy:
        copies = {key: copy.numpy() for key, copy in copies.items()}

    def rebuild(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            found = copies.get(id(item))
            if found is None and as_numpy:
                found = copies[id(item)] = item.numpy()
            return item if found is None else found
        if isinstance(item, list):
            return [rebuild(v) for v in item]
        if isinstance(item, tuple):
            values = [rebuild(v) for v in item]
            # A NamedTuple keeps its type (and its non-tensor fields).
            return type(item)(*values) if hasattr(item, "_fields") else tuple(values)
        if isinstance(item, dict):
            return {k: rebuild(v) for k, v in item.items()}
        return item

    return rebuild(value)


class ModelStage:
    """A stage that runs a PyTorch model on batches of frames (or of crops of frames).

    Subclass it and override the steps you need; each runs on the stage's thread, under
    ``torch.inference_mode()``:

    1. ``setup(device)``: load the model (``load_model``) onto the device, in half precision
       when ``half=True``.
    2. ``select(frame) -> list[Crop]``: the areas to work on; default the whole frame.
       A second-stage model returns one crop per object box it cares about.
    3. ``preprocess(crops) -> batch``: pixels of all crops of the batch into one tensor on the
       device; default: each crop resized to ``input_size`` (height, width), RGB, scaled to
       ``[0, 1]`` then normalised by ``mean``/``std``.
    4. ``forward(batch) -> outputs``: default ``self.model(batch)``.
    5. ``postprocess(outputs, crops) -> list``: one small result per crop, still on the
       device (NMS, thresholds, downscaled masks).
    6. ``attach(crop, result)``: the result, now on the host after one copy for the whole
       batch (:func:`to_host`), goes into the frame's metadata.

    Frames of all sources are grouped by ``batch_policy``; the crops of a batch are forwarded
    in chunks of at most ``max_crops_per_forward`` (None: all at once). With
    ``batch_policy.pad_to_max_size`` a tensor batch is padded with zeros to a multiple of
    ``max_size`` rows, so the model only ever sees fixed shapes.

    Speed options, for CUDA (each is measured in ``benchmarks/video.py``; all are off by
    default because each has a cost somewhere):

    - ``half``: the model and its input in float16 (CPU keeps float32).
    - ``channels_last``: the model's weights in NHWC memory order, so convolutions run on
      tensor cores without layout conversions (most convolutional nets gain on CUDA).
    - ``cuda_graphs``: :meth:`forward` is captured once per input shape and replayed
      (:class:`~torchstream.pipeline.CudaGraphs`): one launch per batch instead of one per
      layer. Needs fixed shapes (``pad_to_max_size``; other shapes past 4 run eagerly), a
      forward pass without host synchronisations, and costs a few seconds and the graph's
      memory per shape: with ``pad_to_max_size`` at set-up, on a batch of one black frame
      (``warm_up_frame_size``), before any source runs; otherwise at the first batch of each
      shape. CPU ignores it.
    - ``compile_mode``: ``torch.compile`` the model with that mode (fused kernels; the first
      batch of each shape compiles, which takes from seconds to minutes). ``"default"``
      combines with ``cuda_graphs`` (the compiled model is captured); ``"reduce-overhead"``
      and ``"max-autotune"`` capture graphs themselves and do not.

    """

    name: str = "model"
    results_as_numpy: bool = False
    """:meth:`attach` receives NumPy arrays instead of host tensors (see :func:`to_host`)."""
    input_size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    warm_up_frame_size: tuple[int, int] = (1080, 1920)
    """(height, width) of the black frame whose batch :meth:`setup` captures as a CUDA graph
    (with ``cuda_graphs`` and fixed batch shapes), before any source runs."""

    def __init__(
        self,
        *,
        name: str | None = None,
        batch_policy: BatchPolicy | None = None,
        half: bool = False,
        max_crops_per_forward: int | None = None,
        channels_last: bool = False,
        cuda_graphs: bool = False,
        compile_mode: CompileMode | None = None,
    ) -> None:
        if max_crops_per_forward is not None and max_crops_per_forward < 1:
            raise ValueError(
                f"max_crops_per_forward must be >= 1 or None, got {max_crops_per_forward}"
            )
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"compile_mode must be one of {', '.join(COMPILE_MODES)} or None, "
                f"got {compile_mode!r}"
            )
        if cuda_graphs and compile_mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(
                f"cuda_graphs and compile_mode={compile_mode!r} do not go together: that mode "
                "captures CUDA graphs itself"
            )
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs
        self.compile_mode: CompileMode | None = compile_mode
        self._graphs: CudaGraphs | None = None
        if name is not None:
            self.name = name
        self.batch_policy = batch_policy or BatchPolicy()
        self.half = half
        self.max_crops_per_forward = max_crops_per_forward
        self.device = torch.device("cpu")
        self.dtype = torch.float16 if half else torch.float32
        self.model: torch.nn.Module | None = None

    # -- 1. setup -------------------------------------------------------------------------
    def load_model(self) -> torch.nn.Module | None:
        """Build and return the model (weights loaded, on the CPU is fine). Default: none."""
        return None

    def setup(self, device: torch.device) -> None:
        self.device = device
        if self.half and device.type == "cpu":
            # float16 convolutions are slow or missing on CPU kernels: keep float32 there.
            self.dtype = torch.float32
        model = self.load_model()
        if model is not None:
            model = model.to(device=device, dtype=self.dtype).eval()
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            if self.compile_mode is not None:
                compiled: Any = torch.compile(model, mode=self.compile_mode, dynamic=False)
                model = compiled
        self.model = model
        self._graphs = CudaGraphs() if self.cuda_graphs and device.type == "cuda" else None
        if self._graphs is not None and self.batch_policy.pad_to_max_size:
            self._capture_at_start()

    def _capture_at_start(self) -> None:
        """Capture the forward pass for the fixed batch shape now, on a padded batch of one
        black frame, instead of at the first real batch: a capture beside running NVDEC
        decoders was seen to fail (``cudaErrorStreamCaptureInvalidated``, the stage then ran
        eagerly) and is slow to redo. Nothing is lost if it cannot: the first batch tries
        again."""
        assert self._graphs is not None
        height, width = self.warm_up_frame_size
        frame = Frame(source_id="torchstream.warm-up", seq=0, width=width, height=height)
        frame.__dict__["_surface"] = torch.zeros(
            (height, width, 3), dtype=torch.uint8, device=self.device
        )
        try:
            with torch.inference_mode():
                crops = self.select(frame)
                if not crops:
                    return  # a second-stage model: its crops come from the frame's objects
                batch = self._pad(self.preprocess(crops[: self.batch_policy.max_size]))
                if isinstance(batch, torch.Tensor):
                    self._graphs(self.forward, batch)
        except Exception as exc:  # the stage's own code on a frame it did not expect
            log.warning(
                "stage %s: no CUDA graph captured at start (%r); the first batch captures it",
                self.name, exc,
            )

    # -- 2. select --------------------------------------------------------------------------
    def select(self, frame: Frame) -> list[Crop]:
        return [Crop.whole(frame)]

    # -- 3. preprocess ----------------------------------------------------------------------
    def preprocess(self, crops: Sequence[Crop]) -> Any:
        from torchstream.surface import crop_resize

        if self.input_size is None:
            raise NotImplementedError(
                f"{type(self).__name__}: set input_size or override preprocess()"
            )
        height, width = self.input_size
        parts = []
        for frame, frame_crops in _group_by_frame(crops):
            surface = frame.require_surface(f"stage {self.name!r}")
            boxes = torch.tensor([c.box for c in frame_crops], dtype=torch.float32)
            parts.append(crop_resize(surface, boxes.to(surface.device), height=height, width=width))
        batch = torch.cat(parts).to(self.device)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return ((batch / 255.0 - mean) / std).to(self.dtype)

    # -- 4. forward -------------------------------------------------------------------------
    def forward(self, batch: Any) -> Any:
        if self.model is None:
            raise NotImplementedError(f"{type(self).__name__}: override load_model() or forward()")
        return self.model(batch)

    # -- 5. postprocess ---------------------------------------------------------------------
    def postprocess(self, outputs: Any, crops: Sequence[Crop]) -> list[Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement postprocess()")

    def finalize(self, results: list[Any], crops: Sequence[Crop]) -> list[Any]:
        """Optional end of step 5 for work that must wait for the GPU (NMS, ``nonzero``,
        anything whose output size depends on the data). Default: nothing.

        Keeping :meth:`postprocess` free of host synchronisations and putting them here
        keeps the two apart: what queues GPU work, and what waits for it.
        """
        return results

    # -- 6. attach --------------------------------------------------------------------------
    def attach(self, crop: Crop, result: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement attach()")

    # -- the Stage protocol -----------------------------------------------------------------
    def process(self, frames: Sequence[Frame]) -> None:
        crops = [crop for frame in frames for crop in self.select(frame)]
        if not crops:
            return
        step = self.max_crops_per_forward or len(crops)
        with torch.inference_mode():
            for start in range(0, len(crops), step):
                chunk = crops[start : start + step]
                self.finish(chunk, self.infer(chunk))

    def infer(self, crops: Sequence[Crop]) -> list[Any]:
        """Steps 3-5a on one chunk of crops: preprocess, forward (replayed as a CUDA graph
        with ``cuda_graphs``), postprocess. One result per crop, on the device."""
        batch = self._pad(self.preprocess(crops))
        if self._graphs is not None and isinstance(batch, torch.Tensor):
            outputs = self._graphs(self.forward, batch)
        else:
            outputs = self.forward(batch)
        results = self.postprocess(outputs, crops)
        if len(results) != len(crops):
            raise RuntimeError(
                f"{type(self).__name__}.postprocess returned {len(results)} results "
                f"for {len(crops)} crops"
            )
        return list(results)

    def finish(self, crops: Sequence[Crop], results: list[Any]) -> None:
        """Steps 5b-6: :meth:`finalize`, one copy to the host, :meth:`attach` per crop (with
        NumPy arrays instead of tensors when the class sets ``results_as_numpy``)."""
        results = self.finalize(results, crops)
        host = to_host(list(results), as_numpy=self.results_as_numpy)
        for crop, result in zip(crops, host, strict=True):
            self.attach(crop, result)

    def _pad(self, batch: Any) -> Any:
        if not (self.batch_policy.pad_to_max_size and isinstance(batch, torch.Tensor)):
            return batch
        size = self.batch_policy.max_size
        rows = batch.shape[0]
        target = -(-rows // size) * size
        if target == rows:
            return batch
        padding = batch.new_zeros((target - rows, *batch.shape[1:]))
        return torch.cat([batch, padding])


def _group_by_frame(crops: Sequence[Crop]) -> list[tuple[Frame, list[Crop]]]:
    """Consecutive runs of crops of the same frame, so the batch keeps the crops' order."""
    groups: list[tuple[Frame, list[Crop]]] = []
    for crop in crops:
        if groups and groups[-1][0] is crop.frame:
            groups[-1][1].append(crop)
        else:
            groups.append((crop.frame, [crop]))
    return groups
