"""Loading a model from a TorchHub repository: GitHub (``owner/name[:ref]``) or a local folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from torchstream._errors import TorchStreamError

__all__ = ["HubError", "load_hub_model"]

logger = logging.getLogger(__name__)


class HubError(TorchStreamError):
    """A TorchHub model could not be loaded: the repository is unreachable (offline machine),
    it has no such entry point, or the entry point failed. The message names the repository
    and the entry point, and the original error is the ``__cause__``."""


def load_hub_model(repo: str, entry: str, **kwargs: Any) -> torch.nn.Module:
    """``torch.hub.load(repo, entry, **kwargs)`` in evaluation mode.

    ``repo`` is either a folder on this machine holding a ``hubconf.py`` (loaded with
    ``source="local"``: nothing is downloaded, the folder's code runs as it is) or a GitHub
    repository ``owner/name[:ref]``, downloaded once into TorchHub's cache
    (``$TORCH_HOME/hub``) and trusted (it runs its ``hubconf.py``: only name repositories you
    trust). Pretrained weights the entry point fetches go to the same cache.

    Raises :class:`HubError` when the repository cannot be reached or loaded, with what to
    do about it; ValueError when the entry point returns something that is not a module.
    """
    local = Path(repo).expanduser()
    try:
        if local.is_dir():
            if not (local / "hubconf.py").is_file():
                raise HubError(f"hub folder {str(local)!r} has no hubconf.py")
            model = torch.hub.load(  # type: ignore[no-untyped-call]
                str(local), entry, source="local", **kwargs
            )
        else:
            model = torch.hub.load(  # type: ignore[no-untyped-call]
                repo, entry, source="github", trust_repo=True, **kwargs
            )
    except HubError:
        raise
    except (OSError, RuntimeError, AttributeError, ImportError) as exc:
        # urllib's URLError is an OSError: an offline machine lands here.
        raise HubError(
            f"cannot load {entry!r} from TorchHub repository {repo!r}: {exc}. Offline? Clone the "
            f"repository (and its weights) on a machine that is online and pass its folder "
            f"instead of {repo!r}."
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"TorchHub entry point {entry!r} of {repo!r} returned {type(model).__name__}, "
            f"not a torch.nn.Module"
        )
    logger.info("loaded %r from TorchHub repository %r", entry, repo)
    return model.eval()
