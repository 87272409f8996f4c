"""What users would otherwise write, for benchmarks/video.py: the same network on the same
streams, decoded on the CPU with OpenCV.

- :func:`naive`: the script users write — per stream a thread with ``cv2.VideoCapture``,
  each frame letterboxed with OpenCV, sent to the GPU and through the model alone (batch 1,
  float32), its result downloaded (masks as pixels) and NMS'd.
- :func:`tuned`: a competent hand-tuned script — per stream a decoding thread feeding one
  bounded queue, batches of up to ``batch_size`` frames copied through a pinned buffer,
  letterboxed on the GPU, float16 channels-last model, postprocessing on the GPU and one
  download per batch.

Both read their files as fast as they can (no pacing): the numbers are their best
throughput, counted over ``seconds`` after ``warmup_seconds``.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _video_models import INPUT_SIZE, network

from torchstream.models import batched_nms, nms

_MEAN = {"yolop-arch": (0.485, 0.456, 0.406), "twinlitenet": (0.0, 0.0, 0.0)}
_STD = {"yolop-arch": (0.229, 0.224, 0.225), "twinlitenet": (1.0, 1.0, 1.0)}


class _Window:
    """Counts frames finished between ``warmup`` and ``warmup + seconds`` from now."""

    def __init__(self, warmup_seconds: float, seconds: float) -> None:
        self.start = time.perf_counter() + warmup_seconds
        self.stop = self.start + seconds
        self.count = 0
        self.lock = threading.Lock()

    def done(self, frames: int = 1) -> bool:
        """Count ``frames`` finished now; False once the window is over."""
        now = time.perf_counter()
        if self.start <= now < self.stop:
            with self.lock:
                self.count += frames
        return now < self.stop

    def rate(self) -> float:
        return self.count / (self.stop - self.start)


def _cv2_letterbox(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    scale = min(height / rgb.shape[0], width / rgb.shape[1])
    new_h, new_w = int(rgb.shape[0] * scale), int(rgb.shape[1] * scale)
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    return cv2.copyMakeBorder(
        resized, top, height - new_h - top, left, width - new_w - left,
        cv2.BORDER_CONSTANT, value=(114, 114, 114),
    )


def _postprocess_one(model: str, outputs: Any) -> Any:
    """What a script does per frame: masks to the host as pixels, boxes NMS'd and copied."""
    if model == "twinlitenet":
        drivable, lanes = outputs
        return drivable[0].argmax(0).cpu().numpy(), lanes[0].argmax(0).cpu().numpy()
    (detections, _), drivable, lanes = outputs
    rows = detections[0]
    scores = rows[:, 4] * rows[:, 5]
    keep = scores > 0.25
    centre, size = rows[keep, :2], rows[keep, 2:4]
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    kept = nms(boxes, scores[keep], iou_threshold=0.45)
    return (
        boxes[kept].cpu().numpy(),
        drivable[0].argmax(0).cpu().numpy(),
        lanes[0].argmax(0).cpu().numpy(),
    )


def naive(
    files: list[Path],
    model: str,
    weights: Path | None,
    *,
    warmup_seconds: float,
    seconds: float,
    device: str = "cuda",
) -> float:
    """Frames/s of the batch-1 script users write, over ``len(files)`` streams."""
    import cv2

    net = network(model, weights).to(device)
    height, width = INPUT_SIZE[model]
    mean = torch.tensor(_MEAN[model], device=device).view(3, 1, 1)
    std = torch.tensor(_STD[model], device=device).view(3, 1, 1)
    window = _Window(warmup_seconds, seconds)

    def work(path: Path) -> None:
        capture = cv2.VideoCapture(str(path))
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            image = torch.from_numpy(_cv2_letterbox(rgb, height, width)).to(device)
            batch = ((image.permute(2, 0, 1).float() / 255 - mean) / std).unsqueeze(0)
            with torch.no_grad():
                _postprocess_one(model, net(batch))
            if not window.done():
                break
        capture.release()

    _run_threads(work, files)
    return window.rate()


def tuned(
    files: list[Path],
    model: str,
    weights: Path | None,
    *,
    warmup_seconds: float,
    seconds: float,
    batch_size: int = 32,
    device: str = "cuda",
) -> float:
    """Frames/s of a hand-tuned script: CPU decode threads, batched float16 inference (float32
    on a CPU device, for a smoke test)."""
    import cv2

    dtype = torch.half if device == "cuda" else torch.float32
    net = network(model, weights).to(device, dtype).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    height, width = INPUT_SIZE[model]
    mean = torch.tensor(_MEAN[model], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(_STD[model], device=device).view(1, 3, 1, 1) * 255
    frames: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=4 * batch_size)
    stop = threading.Event()

    def decode(path: Path) -> None:
        capture = cv2.VideoCapture(str(path))
        while not stop.is_set():
            ok, bgr = capture.read()
            if not ok:
                break
            frames.put(bgr)
        capture.release()

    threads = [threading.Thread(target=decode, args=(p,), daemon=True) for p in files]
    for thread in threads:
        thread.start()
    window = _Window(warmup_seconds, seconds)
    first = frames.get()
    assert first is not None
    source_h, source_w = first.shape[:2]
    scale = min(height / source_h, width / source_w)
    new_h, new_w = int(source_h * scale), int(source_w * scale)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    pinned = torch.empty(
        (batch_size, source_h, source_w, 3), dtype=torch.uint8, pin_memory=device == "cuda"
    )
    pending = [first]
    while True:
        deadline = time.perf_counter() + 0.005
        while len(pending) < batch_size:
            try:
                pending.append(frames.get(timeout=max(0.0, deadline - time.perf_counter())))
            except queue.Empty:
                break
        count = len(pending)
        pinned[:count].copy_(torch.from_numpy(np.stack(pending)))
        pending = []
        with torch.no_grad():
            gpu = pinned[:count].to(device, non_blocking=True).permute(0, 3, 1, 2).flip(1)
            content = F.interpolate(
                gpu.to(dtype), size=(new_h, new_w), mode="bilinear", align_corners=False
            )
            batch = torch.full((count, 3, height, width), 114.0, device=device, dtype=dtype)
            batch[:, :, top : top + new_h, left : left + new_w] = content
            batch = ((batch - mean) / std).to(dtype).contiguous(memory_format=torch.channels_last)
            outputs = net(batch)
            _postprocess_batch(model, outputs, (top, left, new_h, new_w))
        if not window.done(count):
            break
    stop.set()
    while True:  # unblock the decoders
        try:
            frames.get_nowait()
        except queue.Empty:
            break
    return window.rate()


def _postprocess_batch(model: str, outputs: Any, content: tuple[int, int, int, int]) -> Any:
    top, left, new_h, new_w = content
    if model == "twinlitenet":
        heads = outputs
    else:
        (detections, _), *heads = outputs
    masks = torch.stack([head.argmax(1) for head in heads], 1)[
        :, :, top : top + new_h, left : left + new_w
    ].to(torch.uint8)
    if model == "twinlitenet":
        return masks.cpu()
    scores = detections[..., 4] * detections[..., 5]
    frame, index = (scores > 0.25).nonzero(as_tuple=True)
    rows = detections[frame, index]
    boxes = torch.cat([rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2], 1)
    kept = batched_nms(boxes.float(), scores[frame, index].float(), frame, iou_threshold=0.45)
    return masks.cpu(), boxes[kept].cpu(), frame[kept].cpu()


def _run_threads(work: Any, files: list[Path]) -> None:
    threads = [threading.Thread(target=work, args=(p,)) for p in files]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join()
