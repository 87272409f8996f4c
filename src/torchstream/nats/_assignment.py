"""Which worker owns which partition: bounded-load rendezvous hashing, and a view of the
worker group fed by heartbeats. Sans-IO: no NATS, no threads, no clock of its own.

Every worker runs the same pure function over the same set of ready workers, so they agree
on the owners without talking to each other; only the owner of a partition pulls from its
consumer. That is what keeps a ``pinned_client`` priority group honest: an idle consumer pins
whichever client asks first, so a worker that merely *stands by* on a partition it does not
own would steal the pin (the prototype saw one worker take all 16 partitions that way).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["MemberStatus", "Membership", "assign", "partition_score"]

_PERSON = b"ts-assign-v1"


def partition_score(worker_id: str, partition: int) -> int:
    """The rendezvous score of ``worker_id`` for ``partition``: the first 8 bytes of a
    BLAKE2b hash of both, as an unsigned integer. The same on every machine, Python version
    and run (unlike :func:`hash`); the worker with the highest score is the first choice."""
    digest = hashlib.blake2b(
        partition.to_bytes(8, "big", signed=True) + worker_id.encode("utf-8"),
        digest_size=8,
        person=_PERSON,
    ).digest()
    return int.from_bytes(digest, "big")


def assign(partitions: int, workers: Iterable[str], *, load_factor: float = 1.0) -> dict[int, str]:
    """Owners of partitions ``0 .. partitions - 1`` among ``workers``, by rendezvous hashing
    with bounded loads.

    All (partition, worker) pairs are taken in decreasing :func:`partition_score` order and a
    partition goes to the first worker of its pairs that still has room. The result depends
    only on the *set* of worker ids (not their order), so every worker computes the same map.

    Room: with ``load_factor == 1`` (the default) the split is exactly fair: every worker owns
    ``floor(P/W)`` or ``ceil(P/W)`` partitions. Plain rendezvous hashing is uneven at small
    partition counts (16 partitions on 3 workers often split 9/4/3); the cap fixes that. With
    ``load_factor > 1`` a worker owns at most ``ceil(P/W * load_factor)`` and there is no
    minimum: fewer partitions move when the group changes, at the price of balance.

    Movement: when a worker leaves, its partitions move, plus a few more that the caps push
    around (measured in the tests: at 64 partitions and 3 workers, 1 or 2 on average, at most
    about 5); a joining worker takes its fair share and moves a similar few others.

    Returns an empty map when ``workers`` is empty. Raises ValueError for ``partitions < 1``,
    a ``load_factor`` below 1 or not finite, or a worker id repeated or empty.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    _check_load_factor(load_factor)
    ids = list(workers)
    if len(set(ids)) != len(ids):
        raise ValueError(f"workers must be distinct, got {sorted(ids)}")
    if any(not worker for worker in ids):
        raise ValueError("workers must be non-empty strings")
    if not ids:
        return {}
    count = len(ids)
    if load_factor == 1.0:
        floor_load, over = divmod(partitions, count)
        cap = floor_load + (1 if over else 0)
    else:
        # Exact arithmetic: a float product like 64/3*1.5 must not round up past an integer.
        exact = Fraction(partitions, count) * Fraction(load_factor).limit_denominator(10**6)
        cap = math.ceil(exact)
        floor_load, over = cap, 0
    pairs = sorted(
        ((partition_score(w, p), w, p) for w in ids for p in range(partitions)),
        reverse=True,
    )
    owners: dict[int, str] = {}
    loads = dict.fromkeys(ids, 0)
    at_cap = 0  # workers that took one of the `over` places above floor_load (fair mode)
    for _score, worker, partition in pairs:
        if partition in owners:
            continue
        load = loads[worker]
        if load < floor_load:
            pass
        elif load == floor_load and at_cap < over:
            at_cap += 1
        else:
            continue
        owners[partition] = worker
        loads[worker] = load + 1
        if len(owners) == partitions:
            break
    # A worker that is full stays full, and the places sum to >= partitions, so every
    # partition finds one: the loop never ends with a partition unowned.
    return dict(sorted(owners.items()))


def _check_load_factor(load_factor: float) -> None:
    if not math.isfinite(load_factor) or load_factor < 1.0:
        raise ValueError(f"load_factor must be a finite number >= 1, got {load_factor}")


@dataclass(frozen=True)
class MemberStatus:
    """What a :class:`Membership` knows about one worker."""

    worker_id: str
    incarnation: int
    """Which run of the worker (e.g. its start time in ns): a restarted worker keeps its id
    and gets a larger incarnation, and heartbeats of an older run are ignored."""
    ready: bool
    """It said it is ready (model loaded, able to take frames): only then it owns partitions."""
    leaving: bool
    """It announced it is leaving: it owns nothing from then on, whatever arrives later."""
    last_seen_seconds: float
    """When its last heartbeat was observed, on the observer's clock."""


class Membership:
    """The worker group as one worker sees it, fed by heartbeats. Deterministic.

    Feed it every heartbeat received (including the worker's own) with :meth:`observe`; ask
    :meth:`owners`, :meth:`assignment` or :meth:`owned_by` with the current time. A worker
    counts while it is ready and its last heartbeat is at most ``heartbeat_timeout_seconds``
    old; a worker that announces ``leaving`` stops counting at once (its later heartbeats of
    the same incarnation are ignored, a new incarnation may join again).

    Times are ``now_seconds`` values of one monotonic clock of the observer, taken when a
    heartbeat *arrives*: the sender's clock is never compared with ours, so skew does not
    matter. Rule of thumb: heartbeat every ``timeout / 4``, and keep the timeout at or below
    the consumers' pin timeout, so a crashed worker is dropped from the view no later than
    its pin expires.

    ``viewer``: the id of the worker whose view this is. Its own heartbeats travel the same
    way as everyone's (its publish, the server, its connection, its event loop), so they
    measure how well it hears: while its own come back late, everyone's do, and silence
    past its last own heartbeat (plus half a timeout: two heartbeat intervals) does not
    count against the others. On a machine too busy to deliver heartbeats in time (measured
    on the 2-core VM at 3,000 frames/s: all of a worker's heartbeats, its own included,
    arriving up to 2 s after they were sent) a worker no longer sees its peers die and
    takes their partitions, only to hand them back a moment later. A peer that really stops
    is still dropped a timeout after its last heartbeat, as long as the viewer's own come
    back. The viewer itself always counts (while ready): whether its link is gone is for the
    worker to judge (the worker takes it as cut once its own heartbeats have not come back
    for a timeout: :meth:`status` of itself).
    """

    def __init__(
        self,
        *,
        partitions: int,
        heartbeat_timeout_seconds: float,
        load_factor: float = 1.0,
        viewer: str | None = None,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        if not math.isfinite(heartbeat_timeout_seconds) or heartbeat_timeout_seconds <= 0:
            raise ValueError(
                f"heartbeat_timeout_seconds must be a finite number > 0, "
                f"got {heartbeat_timeout_seconds}"
            )
        _check_load_factor(load_factor)
        self._partitions = partitions
        self._timeout = heartbeat_timeout_seconds
        self._load_factor = load_factor
        self._viewer = viewer
        self._members: dict[str, MemberStatus] = {}
        self._cached: tuple[tuple[str, ...], Mapping[int, str]] | None = None

    @property
    def partitions(self) -> int:
        return self._partitions

    def observe(
        self,
        worker_id: str,
        *,
        incarnation: int,
        ready: bool,
        now_seconds: float,
        leaving: bool = False,
    ) -> bool:
        """Record a heartbeat of ``worker_id`` received at ``now_seconds``. Returns True when
        it changed the set of workers that count at ``now_seconds`` (a join, a leave, a
        restart or a ready/unready switch), so the caller knows to recompute its partitions.

        Heartbeats of an incarnation older than the one known, and any heartbeat of an
        incarnation that announced ``leaving``, are ignored."""
        if not worker_id:
            raise ValueError("worker_id must be a non-empty string")
        before = self.owners(now_seconds)
        known = self._members.get(worker_id)
        if known is not None and (
            incarnation < known.incarnation or (incarnation == known.incarnation and known.leaving)
        ):
            return False
        self._members[worker_id] = MemberStatus(
            worker_id=worker_id,
            incarnation=incarnation,
            ready=ready and not leaving,
            leaving=leaving,
            last_seen_seconds=now_seconds,
        )
        self._prune(now_seconds)
        return self.owners(now_seconds) != before

    def owners(self, now_seconds: float) -> tuple[str, ...]:
        """Ids of the workers that count at ``now_seconds`` (ready, not leaving, heard from
        within the timeout as the viewer hears: see the class), sorted."""
        heard = self._heard_until(now_seconds)
        return tuple(sorted(m.worker_id for m in self._members.values() if self._counts(m, heard)))

    def _heard_until(self, now_seconds: float) -> float:
        """The time up to which silence counts against a worker: ``now_seconds``, or, while
        the viewer's own heartbeats are late, a heartbeat interval or two after the last one
        that came back (what the viewer does not hear from itself, it cannot expect to hear
        from anyone)."""
        me = self._members.get(self._viewer) if self._viewer is not None else None
        if me is None:
            return now_seconds
        return min(now_seconds, me.last_seen_seconds + self._timeout / 2)

    def _counts(self, member: MemberStatus, heard_until: float) -> bool:
        return member.ready and (
            member.worker_id == self._viewer
            or heard_until - member.last_seen_seconds <= self._timeout
        )

    def assignment(self, now_seconds: float) -> Mapping[int, str]:
        """Partition -> owner among :meth:`owners` (see :func:`assign`); empty if none."""
        owners = self.owners(now_seconds)
        if self._cached is None or self._cached[0] != owners:
            mapping = assign(self._partitions, owners, load_factor=self._load_factor)
            self._cached = (owners, mapping)
        return self._cached[1]

    def owned_by(self, worker_id: str, now_seconds: float) -> frozenset[int]:
        """The partitions ``worker_id`` owns at ``now_seconds``: empty while it is not ready
        (or unheard of, or leaving): a worker pulls from nothing before it says it is ready."""
        return frozenset(p for p, w in self.assignment(now_seconds).items() if w == worker_id)

    def next_change_seconds(self, now_seconds: float) -> float | None:
        """The earliest time after ``now_seconds`` at which a counted worker expires if no
        heartbeat arrives, so the caller can arm one timer instead of polling; None if no
        worker counts."""
        heard = self._heard_until(now_seconds)
        deadlines = [
            m.last_seen_seconds + self._timeout
            for m in self._members.values()
            if m.worker_id != self._viewer and self._counts(m, heard)
        ]
        return min(deadlines) if deadlines else None

    def status(self, worker_id: str) -> MemberStatus | None:
        """What is known about ``worker_id`` (a copy), or None."""
        return self._members.get(worker_id)

    def _prune(self, now_seconds: float) -> None:
        # Forget workers silent for two timeouts: an expired worker's record serves nothing,
        # and a leaving one's only shields against its own late heartbeats, which arrive
        # before its leave notice on the same connection. Keeps memory bounded under churn.
        horizon, heard = 2 * self._timeout, self._heard_until(now_seconds)
        stale = [w for w, m in self._members.items() if heard - m.last_seen_seconds > horizon]
        for worker_id in stale:
            del self._members[worker_id]
