"""The HTTP front end's public names, and what happens without FastAPI."""

from __future__ import annotations

import subprocess
import sys

import pytest

PUBLIC = {
    "Admission", "AdmissionStatistics", "Backend", "InProcessBackend", "ModuleBackend",
    "Outcome", "RequestFailed", "ServeConfig", "SourceRequest", "create_app",
    "create_control_app", "read_api_keys",
}


def test_public_names() -> None:
    pytest.importorskip("fastapi", reason="pip install 'torchstream[http]'")
    import torchstream.http as http

    assert set(http.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(http, name), name


def test_without_fastapi_the_package_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['fastapi'] = None\n"
        "import torchstream\n"
        "try:\n"
        "    import torchstream.http\n"
        "except torchstream.MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fastapi is not installed: pip install 'torchstream[http]'"
