"""Bounded-load rendezvous hashing and the heartbeat-fed membership view."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchstream.nats._assignment import Membership, assign, partition_score

worker_ids = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12
)
groups = st.lists(worker_ids, min_size=1, max_size=24, unique=True)


def _loads(mapping: dict[int, str], workers: list[str]) -> dict[str, int]:
    loads = dict.fromkeys(workers, 0)
    for owner in mapping.values():
        loads[owner] += 1
    return loads


def _moved(before: dict[int, str], after: dict[int, str]) -> set[int]:
    return {p for p in before if before[p] != after[p]}


def test_score_is_pinned() -> None:
    # Every worker of a deployment must compute the same owners, across machines and
    # versions: changing the hash is a wire-format change, and this test says so.
    assert partition_score("worker-a", 0) == partition_score("worker-a", 0)
    assert partition_score("worker-a", 0) != partition_score("worker-a", 1)
    assert partition_score("worker-a", 0) != partition_score("worker-b", 0)
    assert partition_score("gpu-1", 7) == 0x14C254C776509E5A
    assert assign(4, ["gpu-1", "gpu-2"]) == {0: "gpu-2", 1: "gpu-1", 2: "gpu-1", 3: "gpu-2"}


@settings(deadline=None, max_examples=150)
@given(partitions=st.integers(1, 200), workers=groups, seed=st.integers(0, 2**32 - 1))
def test_same_owners_whatever_the_order(partitions: int, workers: list[str], seed: int) -> None:
    shuffled = list(workers)
    random.Random(seed).shuffle(shuffled)
    assert assign(partitions, workers) == assign(partitions, shuffled)


@settings(deadline=None, max_examples=150)
@given(partitions=st.integers(1, 300), workers=groups)
def test_fair_share_by_default(partitions: int, workers: list[str]) -> None:
    mapping = assign(partitions, workers)
    assert sorted(mapping) == list(range(partitions))
    loads = _loads(mapping, workers)
    low, high = partitions // len(workers), math.ceil(partitions / len(workers))
    assert all(low <= n <= high for n in loads.values()), loads


@settings(deadline=None, max_examples=100)
@given(
    partitions=st.integers(1, 300),
    workers=groups,
    load_factor=st.floats(1.0, 3.0, allow_nan=False),
)
def test_load_factor_caps(partitions: int, workers: list[str], load_factor: float) -> None:
    mapping = assign(partitions, workers, load_factor=load_factor)
    assert sorted(mapping) == list(range(partitions))
    cap = math.ceil(partitions / len(workers) * load_factor - 1e-9)
    assert max(_loads(mapping, workers).values()) <= cap


def test_load_factor_has_no_float_rounding_surprise() -> None:
    # 60 / 4 * 1.2 is 18 exactly; a float product would give 18.000000000000004 -> 19.
    mapping = assign(60, ["a", "b", "c", "d"], load_factor=1.2)
    assert max(_loads(mapping, ["a", "b", "c", "d"]).values()) <= 18


def test_small_partition_counts_are_even_where_plain_rendezvous_is_not() -> None:
    # Plain rendezvous (each partition to its top-scoring worker) splits 16 partitions on 3
    # workers unevenly for many groups; the cap keeps every split at 5 or 6.
    rng = random.Random(7)
    worst_plain = 0
    for _ in range(50):
        workers = [f"gpu-{rng.randrange(10**9)}" for _ in range(3)]
        plain = {p: max(workers, key=lambda w, p=p: partition_score(w, p)) for p in range(16)}
        worst_plain = max(worst_plain, max(_loads(plain, workers).values()))
        assert sorted(_loads(assign(16, workers), workers).values()) in ([5, 5, 6],)
    assert worst_plain >= 9


@settings(deadline=None, max_examples=100)
@given(
    partitions=st.integers(1, 256),
    workers=st.lists(worker_ids, min_size=2, max_size=16, unique=True),
    data=st.data(),
)
def test_leave_moves_the_leavers_partitions_and_a_few_more(
    partitions: int, workers: list[str], data: st.DataObject
) -> None:
    leaver = data.draw(st.sampled_from(workers))
    before = assign(partitions, workers)
    after = assign(partitions, [w for w in workers if w != leaver])
    theirs = {p for p, w in before.items() if w == leaver}
    moved = _moved(before, after)
    assert theirs <= moved
    assert len(moved - theirs) <= max(len(workers), partitions // 4)


@settings(deadline=None, max_examples=100)
@given(
    partitions=st.integers(1, 256),
    workers=st.lists(worker_ids, min_size=2, max_size=16, unique=True),
)
def test_join_takes_a_fair_share_and_moves_a_few_more(partitions: int, workers: list[str]) -> None:
    joiner, rest = workers[0], workers[1:]
    before = assign(partitions, rest)
    after = assign(partitions, workers)
    taken = {p for p, w in after.items() if w == joiner}
    assert partitions // len(workers) <= len(taken) <= math.ceil(partitions / len(workers))
    moved = _moved(before, after)
    assert taken <= moved
    assert len(moved - taken) <= max(len(workers), partitions // 4)


def test_movement_at_the_default_layout() -> None:
    # 64 partitions, 3 workers, 200 random groups (seed 11): the numbers quoted in assign().
    rng = random.Random(11)
    leave_extra, join_extra = [], []
    for _ in range(200):
        workers = [f"gpu-{rng.randrange(10**9)}" for _ in range(3)]
        before = assign(64, workers)
        after = assign(64, workers[1:])
        leave_extra.append(
            len(_moved(before, after)) - sum(w == workers[0] for w in before.values())
        )
        joined = assign(64, [*workers, "gpu-new"])
        join_extra.append(
            len(_moved(before, joined)) - sum(w == "gpu-new" for w in joined.values())
        )
    assert statistics.mean(leave_extra) <= 2 and max(leave_extra) <= 8
    assert statistics.mean(join_extra) <= 3 and max(join_extra) <= 8


def test_no_workers_no_owners() -> None:
    assert assign(8, []) == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"partitions": 0, "workers": ["a"]}, "partitions must be >= 1, got 0"),
        ({"partitions": 4, "workers": ["a"], "load_factor": 0.5}, "load_factor must be"),
        ({"partitions": 4, "workers": ["a"], "load_factor": math.nan}, "load_factor must be"),
        ({"partitions": 4, "workers": ["a", "a"]}, "workers must be distinct"),
        ({"partitions": 4, "workers": [""]}, "non-empty"),
    ],
)
def test_assign_checks_its_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        assign(**kwargs)  # type: ignore[arg-type]


# Membership --------------------------------------------------------------------------------


def _membership(**kwargs: float) -> Membership:
    return Membership(partitions=16, heartbeat_timeout_seconds=1.0, **kwargs)


def test_a_worker_counts_only_once_ready() -> None:
    m = _membership()
    assert m.observe("a", incarnation=1, ready=False, now_seconds=0.0) is False
    assert m.owners(0.0) == ()
    assert m.owned_by("a", 0.0) == frozenset()
    assert m.observe("a", incarnation=1, ready=True, now_seconds=0.1) is True
    assert m.owned_by("a", 0.1) == frozenset(range(16))
    # Going unready (reloading a model) stops it counting, without waiting for expiry.
    assert m.observe("a", incarnation=1, ready=False, now_seconds=0.2) is True
    assert m.owners(0.2) == ()


def test_the_first_ready_worker_owns_all_then_shares() -> None:
    # Until peers say they are ready, the one ready worker owns every partition (a standby
    # that is not ready pulls from nothing, so it cannot steal a pin); then they split.
    m = _membership()
    m.observe("a", incarnation=1, ready=True, now_seconds=0.0)
    m.observe("b", incarnation=1, ready=False, now_seconds=0.0)
    m.observe("c", incarnation=1, ready=False, now_seconds=0.0)
    assert len(m.owned_by("a", 0.0)) == 16
    m.observe("b", incarnation=1, ready=True, now_seconds=0.1)
    m.observe("c", incarnation=1, ready=True, now_seconds=0.1)
    shares = [m.owned_by(w, 0.1) for w in ("a", "b", "c")]
    assert sorted(len(s) for s in shares) == [5, 5, 6]
    assert frozenset().union(*shares) == frozenset(range(16))


def test_expiry_after_the_timeout() -> None:
    m = _membership()
    m.observe("a", incarnation=1, ready=True, now_seconds=10.0)
    m.observe("b", incarnation=1, ready=True, now_seconds=10.5)
    assert m.owners(11.0) == ("a", "b")  # exactly the timeout: still counts
    assert m.next_change_seconds(11.0) == 11.0
    assert m.owners(11.01) == ("b",)
    assert m.owned_by("b", 11.01) == frozenset(range(16))
    assert m.next_change_seconds(11.01) == 11.5
    assert m.next_change_seconds(12.0) is None
    # A heartbeat after expiry brings it back.
    assert m.observe("a", incarnation=1, ready=True, now_seconds=11.2) is True


def _viewer_view() -> Membership:
    """The view of worker ``a``: it, ``b`` and ``c`` all heard at 10.0 (timeout 1 s)."""
    m = Membership(partitions=16, heartbeat_timeout_seconds=1.0, viewer="a")
    for worker in "abc":
        m.observe(worker, incarnation=1, ready=True, now_seconds=10.0)
    return m


def test_a_peer_that_stops_expires_a_timeout_after_its_last_heartbeat() -> None:
    m = _viewer_view()
    for now in (10.25, 10.5, 10.75, 11.0, 11.25):  # a's own heartbeats keep coming back
        m.observe("a", incarnation=1, ready=True, now_seconds=now)
        m.observe("b", incarnation=1, ready=True, now_seconds=now)
    assert m.owners(11.0) == ("a", "b", "c")
    assert m.owners(11.01) == ("a", "b")  # as without a viewer: c silent for the timeout
    assert m.next_change_seconds(11.25) == 12.25


def test_while_the_viewers_own_heartbeats_are_late_nobody_expires() -> None:
    # A busy machine: from 10.0 every heartbeat reaches `a` late, its own too. What it does
    # not hear from itself it cannot expect from the others: silence past its own last
    # heartbeat (plus half a timeout) does not count against them.
    m = _viewer_view()
    assert m.owners(12.0) == ("a", "b", "c")  # 2 s without any heartbeat
    assert m.owners(13.0) == ("a", "b", "c")
    # They arrive, late and all together: a's own first; c's never does (it died at 10.0).
    m.observe("a", incarnation=1, ready=True, now_seconds=13.0)
    m.observe("b", incarnation=1, ready=True, now_seconds=13.0)
    assert m.owners(13.0) == ("a", "b")
    # Without a viewer the same heartbeats expire everyone after a second.
    plain = _membership()
    for worker in "abc":
        plain.observe(worker, incarnation=1, ready=True, now_seconds=10.0)
    assert plain.owners(12.0) == ()


def test_the_viewer_counts_itself_whatever_its_heartbeats() -> None:
    m = _viewer_view()
    assert m.owners(20.0) == ("a", "b", "c")  # 10 s silent: a cut link is the worker's call
    # Its own heartbeat comes back, saying it is no longer ready: it stops counting, and
    # b and c, silent for 10 s while a hears again, have expired.
    m.observe("a", incarnation=1, ready=False, now_seconds=20.0)
    assert m.owners(20.0) == ()
    assert Membership(partitions=4, heartbeat_timeout_seconds=1.0, viewer="z").owners(0) == ()


def test_leaving_is_at_once_and_final_for_that_incarnation() -> None:
    m = _membership()
    m.observe("a", incarnation=1, ready=True, now_seconds=0.0)
    m.observe("b", incarnation=1, ready=True, now_seconds=0.0)
    assert m.observe("a", incarnation=1, ready=True, leaving=True, now_seconds=0.1) is True
    assert m.owners(0.1) == ("b",)
    # A late heartbeat of the same run does not resurrect it.
    assert m.observe("a", incarnation=1, ready=True, now_seconds=0.2) is False
    assert m.owners(0.2) == ("b",)
    # A new run of the same worker joins.
    assert m.observe("a", incarnation=2, ready=True, now_seconds=0.3) is True
    assert m.owners(0.3) == ("a", "b")


def test_heartbeats_of_an_older_run_are_ignored() -> None:
    m = _membership()
    m.observe("a", incarnation=5, ready=False, now_seconds=0.0)
    assert m.observe("a", incarnation=4, ready=True, now_seconds=0.1) is False
    assert m.owners(0.1) == ()
    status = m.status("a")
    assert status is not None and status.incarnation == 5


def test_silent_workers_are_forgotten() -> None:
    m = _membership()
    m.observe("a", incarnation=1, ready=True, leaving=True, now_seconds=0.0)
    m.observe("b", incarnation=1, ready=True, now_seconds=2.5)
    assert m.status("a") is None


@settings(deadline=None, max_examples=100)
@given(
    beats=st.lists(
        st.tuples(st.sampled_from("abcdef"), st.integers(1, 3), st.booleans(), st.booleans()),
        max_size=30,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_views_fed_the_same_heartbeats_agree(
    beats: list[tuple[str, int, bool, bool]], seed: int
) -> None:
    # Two workers receive the same heartbeats of one instant, in different orders across
    # senders (each sender's own beats stay in order, as on one NATS connection).
    first, second = _membership(), _membership()
    for worker, incarnation, ready, leaving in beats:
        first.observe(worker, incarnation=incarnation, ready=ready, leaving=leaving, now_seconds=0)
    by_sender: dict[str, list[tuple[str, int, bool, bool]]] = {}
    for beat in beats:
        by_sender.setdefault(beat[0], []).append(beat)
    senders = sorted(by_sender)
    random.Random(seed).shuffle(senders)
    for sender in senders:
        for worker, incarnation, ready, leaving in by_sender[sender]:
            second.observe(
                worker, incarnation=incarnation, ready=ready, leaving=leaving, now_seconds=0
            )
    assert first.assignment(0) == second.assignment(0)


def test_membership_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="heartbeat_timeout_seconds must be"):
        Membership(partitions=4, heartbeat_timeout_seconds=0)
    with pytest.raises(ValueError, match="partitions must be"):
        Membership(partitions=0, heartbeat_timeout_seconds=1)
    with pytest.raises(ValueError, match="load_factor must be"):
        Membership(partitions=4, heartbeat_timeout_seconds=1, load_factor=0.9)
    with pytest.raises(ValueError, match="worker_id"):
        _membership().observe("", incarnation=1, ready=True, now_seconds=0)
