"""freeze_startup_heap: a started service's objects are out of the collector's reach."""

from __future__ import annotations

import gc

from torchstream._gc import freeze_startup_heap


def test_objects_alive_at_start_up_are_frozen_and_garbage_is_gone_first() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector frees it

    import weakref

    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    kept = [[] for _ in range(1000)]  # lists: tracked by the collector
    before = gc.get_freeze_count()
    thresholds = gc.get_threshold()
    try:
        freeze_startup_heap()
        assert gone() is None  # collected before the freeze, not frozen forever
        assert gc.get_freeze_count() >= before + len(kept)
        assert gc.get_threshold()[2] >= 100  # full passes rarer
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
