from __future__ import annotations

import threading

import pytest

from torchstream import ClosedResourceError, OverloadedError
from torchstream.pipeline import Channel, EndOfChannel


def test_fifo_and_close_drains() -> None:
    ch: Channel[int] = Channel("t", 4)
    for i in range(3):
        ch.put(i)
    ch.close()
    assert [ch.get(), ch.get(), ch.get()] == [0, 1, 2]
    with pytest.raises(EndOfChannel):
        ch.get()
    with pytest.raises(ClosedResourceError):
        ch.put(9)
    ch.close()  # idempotent


def test_put_nowait_overload_and_get_timeout() -> None:
    ch: Channel[int] = Channel("t", 1)
    ch.put_nowait(1)
    with pytest.raises(OverloadedError):
        ch.put_nowait(2)
    assert ch.get(timeout_seconds=0) == 1
    with pytest.raises(TimeoutError):
        ch.get(timeout_seconds=0.01)


def test_latest_drops_only_own_oldest_and_never_markers() -> None:
    ch: Channel[str] = Channel(
        "t", 10, per_key_capacity=2, droppable=lambda item: not item.startswith("end")
    )
    ch.put("b0", key="b")
    assert ch.put("a0", key="a", policy="latest") == []
    assert ch.put("a1", key="a", policy="latest") == []
    assert ch.put("a2", key="a", policy="latest") == ["a0"]
    assert ch.statistics().dropped_total == 1
    drained = [ch.get() for _ in range(3)]
    assert drained == ["b0", "a1", "a2"]


def test_block_waits_for_room() -> None:
    ch: Channel[int] = Channel("t", 1)
    ch.put(0)
    done = threading.Event()

    def producer() -> None:
        ch.put(1)
        done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert not done.wait(0.05)
    assert ch.get() == 0
    assert done.wait(5)
    thread.join()
    assert ch.get() == 1


def test_close_wakes_a_blocked_producer() -> None:
    ch: Channel[int] = Channel("t", 1)
    ch.put(0)
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            ch.put(1)
        except ClosedResourceError as exc:
            errors.append(exc)

    thread = threading.Thread(target=producer)
    thread.start()
    ch.close()
    thread.join(5)
    assert len(errors) == 1


def test_bad_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Channel("t", 0)
    with pytest.raises(ValueError, match="per_key_capacity"):
        Channel("t", 2, per_key_capacity=3)


def test_get_many_takes_a_burst_in_order_and_frees_room() -> None:
    ch: Channel[int] = Channel("t", 8, per_key_capacity=3)
    for i in range(3):
        ch.put(i, key="a")
    ch.put_many([10, 11])
    assert ch.get_many(4) == [0, 1, 2, 10]
    ch.put(3, key="a")  # the key's quota was released
    assert ch.get_many(10) == [11, 3]
    with pytest.raises(TimeoutError):
        ch.get_many(5, timeout_seconds=0.01)
    stats = ch.statistics()
    assert (stats.put_total, stats.get_total, stats.size) == (6, 6, 0)


def test_put_many_blocks_for_room_and_fails_when_closed() -> None:
    ch: Channel[int] = Channel("t", 2)
    done = threading.Event()

    def producer() -> None:
        ch.put_many([1, 2, 3, 4])
        done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    got = []
    while len(got) < 4:
        got.extend(ch.get_many(4, timeout_seconds=5))
    thread.join(5)
    assert got == [1, 2, 3, 4] and done.is_set()
    ch.close()
    with pytest.raises(ClosedResourceError):
        ch.put_many([5])


def test_put_many_larger_than_capacity_with_a_waiting_consumer() -> None:
    # The consumer is already waiting when a burst bigger than the channel arrives.
    ch: Channel[int] = Channel("t", 2)
    got: list[int] = []

    def consumer() -> None:
        while len(got) < 50:
            got.extend(ch.get_many(8, timeout_seconds=5))

    thread = threading.Thread(target=consumer)
    thread.start()
    ch.put_many(list(range(50)))
    thread.join(10)
    assert got == list(range(50))
