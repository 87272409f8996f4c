"""Every Python example in the README runs."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from torchstream import Pipeline
from torchstream.sinks import CallbackSink
from torchstream.testing import SyntheticSource

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int) -> None:
    module = types.ModuleType(f"readme_{index}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    namespace: dict[str, Any] = module.__dict__
    try:
        exec(compile(BLOCKS[index], f"README.md[{index}]", "exec"), namespace)
    finally:
        del sys.modules[module.__name__]
    if "Brightness" in namespace:  # the ModelStage example: run it for real
        frames: list[Any] = []
        with Pipeline([namespace["Brightness"]()], [CallbackSink(frames.append)]) as pipeline:
            pipeline.add_source(SyntheticSource("cam", frames=3))
            pipeline.wait()
        assert [0 < f.attributes["brightness.mean"] < 1 for f in frames] == [True] * 3
