"""The backlog estimate behind a live source's keyframe skipping and lag."""

from __future__ import annotations

import pytest

from torchstream.sources._backlog import Backlog


def test_backlog_grows_with_slow_reading_and_ignores_clock_jumps() -> None:
    backlog = Backlog()
    # Read on time: no backlog, whatever the network jitter.
    assert max(backlog.update(i * 0.04 + (0.01 if i % 3 else 0), i * 0.04) for i in range(50)) <= (
        0.011
    )
    # Read slower than the stream (60 ms per 40 ms frame): backlog grows by 20 ms a frame.
    slow = [backlog.update(2.0 + i * 0.06, 2.0 + i * 0.04) for i in range(50)]
    assert slow[-1] == pytest.approx(49 * 0.02, abs=0.01)
    # The sender's clock jumps back 3 s (RTCP resync): the backlog carries over unchanged.
    assert backlog.update(5.0, 0.0 + 2.0 + 50 * 0.04 - 3.0) == pytest.approx(slow[-1], abs=0.05)
