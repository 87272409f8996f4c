from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["tcp", "ipc"])
def bind_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An address to bind a fresh socket to: any free port on loopback, or a Unix socket."""
    if request.param == "tcp":
        return "tcp://127.0.0.1:*"
    return f"ipc://{tmp_path}/s.sock"
