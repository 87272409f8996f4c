"""The garbage collector in long-running services."""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap() -> None:
    """Move every object alive now (imported modules, loaded models: ~180,000 objects with
    torch) out of the cyclic garbage collector's reach, once a service has started.

    A full collection walks every tracked object: ~150 ms with torch imported on an idle
    core, 1-2 s measured in a NATS worker on a busy 2-core machine, during which no thread
    runs Python, so the worker missed its pulls and fenced itself. Frozen objects are
    never walked again (nor freed by the collector: fine for what lives as long as the
    process); full passes then come ten times more rarely (the third threshold at 100): in a
    worker at 1,000 cameras, 1 full pass in 2 minutes instead of 10-13, its stalls from
    19-30 to 3 in 50 s. Called by the worker, the module, the HTTP server and ``torchstream run``
    after their pipeline is set up.
    """
    gc.collect()
    gc.freeze()
    young, middle, full = gc.get_threshold()
    # After the freeze the heap the collector still walks is the working set, and a full
    # pass came every ~10 s in a busy worker (each collecting only a few thousand
    # objects): ten times rarer.
    gc.set_threshold(young, middle, max(full, 100))
