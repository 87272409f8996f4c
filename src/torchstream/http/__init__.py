"""The HTTP front end: a FastAPI app in front of a batching pipeline (``torchstream serve``).

Needs the ``http`` extra: ``pip install 'torchstream[http]'``.
"""

try:
    import fastapi  # noqa: F401
except ImportError as exc:
    from torchstream._errors import MissingDependencyError

    raise MissingDependencyError("fastapi", "http") from exc

from torchstream.http._admission import Admission, AdmissionStatistics
from torchstream.http._app import create_app
from torchstream.http._backend import Backend, InProcessBackend, Outcome, RequestFailed
from torchstream.http._config import ServeConfig, read_api_keys
from torchstream.http._control import SourceRequest, create_control_app
from torchstream.http._module_backend import ModuleBackend

__all__ = [
    "Admission",
    "AdmissionStatistics",
    "Backend",
    "InProcessBackend",
    "ModuleBackend",
    "Outcome",
    "RequestFailed",
    "ServeConfig",
    "SourceRequest",
    "create_app",
    "create_control_app",
    "read_api_keys",
]
