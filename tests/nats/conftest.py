from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from torchstream.testing import NatsCluster, NatsServer, nats_server_missing

# "nats.js", not "nats": without nats-py, this folder (tests/nats) would pass for the package.
pytest.importorskip("nats.js", reason="nats-py is not installed: pip install 'torchstream[nats]'")

_MISSING = nats_server_missing()


@pytest.fixture
def server() -> Iterator[NatsServer]:
    """A fresh single-node nats-server with JetStream and its own file store."""
    if _MISSING:
        pytest.skip(_MISSING)
    with NatsServer() as running:
        yield running


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    """A fresh 3-node cluster on loopback."""
    if _MISSING:
        pytest.skip(_MISSING)
    with NatsCluster() as running:
        yield running


@pytest.fixture
def restore_signal_handlers() -> Iterator[None]:
    """CLI commands run in-process install their own SIGINT/SIGTERM handlers: put pytest's
    back afterwards."""
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)
