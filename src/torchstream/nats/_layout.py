"""Where frames and results live in JetStream: :class:`Layout` (the configuration) and
:func:`init_layout` (creates or checks it on a server, idempotently).

Sources publish to ``<prefix>.in.<source_id>``. The input stream captures those subjects and
rewrites each, as it stores it, to ``<prefix>.p.<partition>.<source_id>`` with the subject
mapping ``{{partition(P,1)}}``: the FNV-1a hash of the source id modulo P, so a camera always
lands in the same partition (:meth:`Layout.partition_of` computes the same number here).
Each partition has one durable pull consumer (``<consumer_prefix><partition>``) with explicit
acks, ``max_ack_pending`` as its in-flight budget, and a ``pinned_client`` priority group:
one worker at a time pulls a partition, in order, and loses it when it has not pulled for
``pin_timeout_seconds``.

Results go to ``<prefix>.out.<source_id>`` (kept by an optional results stream). Three KV /
object buckets sit beside: keyframe positions (source id → stream sequence of its last
keyframe, written by the publisher), worker membership (heartbeats, with a TTL) and images
too large for a message.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Literal

import nats.js.api
import nats.js.errors
from nats.aio.client import Client as NATS

from torchstream.nats._errors import JetStreamError, LayoutError
from torchstream.nats._jsapi import JetStreamApi, _nanoseconds

__all__ = ["SOURCE_ID_PATTERN", "InitReport", "Layout", "check_source_id", "init_layout"]

log = logging.getLogger(__name__)

SOURCE_ID_PATTERN = r"^[A-Za-z0-9_\-]{1,256}$"
"""Source ids that can travel over NATS: one subject token (no dots, spaces or wildcards)
that is also a valid KV key. Letters, digits, ``_`` and ``-``."""

KEYFRAME_HISTORY = 8
"""Keyframe positions kept per camera in the keyframe bucket."""

_SOURCE_ID = re.compile(SOURCE_ID_PATTERN)
_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_\-]{1,32}(\.[A-Za-z0-9_\-]{1,32})*$")


def check_source_id(source_id: str) -> str:
    """Return ``source_id`` if it can be a NATS subject token, else raise ``ValueError``."""
    if not _SOURCE_ID.match(source_id):
        raise ValueError(
            f"source id {source_id[:80]!r} cannot travel over NATS: use 1 to 256 letters, "
            "digits, '_' or '-' (no dots, spaces or wildcards)"
        )
    return source_id


def _fnv1a_32(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


@dataclass(frozen=True, kw_only=True)
class Layout:
    """The streams, consumers and buckets of one torchstream deployment on JetStream.

    Everything a source, worker or sink needs to agree on; pass the same one everywhere
    (the CLI builds it from its options). Durations are seconds, sizes bytes.

    ``partitions`` (P): how many partitions cameras are hashed into, and so the most workers
    that can share the load. Fixed once created: changing it re-maps cameras (see
    :func:`init_layout`). Rule of thumb: several times the largest worker count you expect
    (64 serves up to ~16 workers evenly).
    ``pin_timeout_seconds``: how long a partition stays pinned to a worker that stopped
    pulling; a crashed worker's partitions move after about this long.
    ``max_ack_pending``: frames a partition may have delivered and not yet acknowledged
    (the in-flight budget: backpressure for a slow worker).
    ``ack_wait_seconds``: a delivered frame not acknowledged within this is delivered again.
    ``max_age_seconds`` / ``max_bytes``: live limits of the input stream; older frames are
    discarded (``discard: old``) and counted by workers as ``broker_discard``.
    ``replicas``: copies of each stream on a cluster (1 on a single server, 3 on a cluster).
    ``results_stream``: keep results and drop records in a stream too (None: they are plain
    messages to whoever listens), limited by ``results_max_age_seconds``; workers then wait
    for its acks (a result's input is acknowledged once it is stored, a drop record is sent
    again until it is).
    ``heartbeat_ttl_seconds``: how long a worker's heartbeat entry lives in the membership
    bucket.
    """

    prefix: str = "ts"
    input_stream: str = "TS_IN"
    results_stream: str | None = "TS_OUT"
    partitions: int = 64
    pin_timeout_seconds: float = 1.0
    max_ack_pending: int = 256
    ack_wait_seconds: float = 30.0
    max_age_seconds: float = 60.0
    max_bytes: int = 1 << 30
    results_max_age_seconds: float = 300.0
    replicas: int = 1
    storage: Literal["file", "memory"] = "file"
    priority_group: str = "ts"
    consumer_prefix: str = "ts-p"
    keyframes_bucket: str = "ts_keyframes"
    workers_bucket: str = "ts_workers"
    heartbeat_ttl_seconds: float = 5.0
    objects_bucket: str = "ts_images"

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"prefix must be dot-separated subject tokens, got {self.prefix!r}")
        for name in ("input_stream", "priority_group", "consumer_prefix", "keyframes_bucket",
                     "workers_bucket", "objects_bucket"):
            value = getattr(self, name)
            if not _NAME.match(value):
                raise ValueError(
                    f"{name} must be 1 to 64 letters, digits, '_' or '-', got {value!r}"
                )
        if self.results_stream is not None and not _NAME.match(self.results_stream):
            raise ValueError(f"results_stream must be a stream name, got {self.results_stream!r}")
        if not 1 <= self.partitions <= 1024:
            raise ValueError(f"partitions must be in 1..1024, got {self.partitions}")
        if self.replicas not in (1, 3, 5):
            raise ValueError(f"replicas must be 1, 3 or 5, got {self.replicas}")
        if self.max_ack_pending < 1:
            raise ValueError(f"max_ack_pending must be >= 1, got {self.max_ack_pending}")
        if self.max_bytes < 1 << 20:
            raise ValueError(f"max_bytes must be at least 1 MiB, got {self.max_bytes}")
        for name in ("pin_timeout_seconds", "ack_wait_seconds", "max_age_seconds",
                     "results_max_age_seconds", "heartbeat_ttl_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.ack_wait_seconds <= self.pin_timeout_seconds:
            raise ValueError(
                f"ack_wait_seconds ({self.ack_wait_seconds}) must be longer than "
                f"pin_timeout_seconds ({self.pin_timeout_seconds})"
            )
        if self.storage not in ("file", "memory"):
            raise ValueError(f"storage must be 'file' or 'memory', got {self.storage!r}")

    # -- subjects and names ------------------------------------------------------------------

    def input_subject(self, source_id: str) -> str:
        """Where a source publishes: ``<prefix>.in.<source_id>``."""
        return f"{self.prefix}.in.{check_source_id(source_id)}"

    def partition_subject(self, partition: int, source_id: str = "*") -> str:
        """Where the input stream stores a source's frames: ``<prefix>.p.<n>.<source_id>``
        (``*``: the partition's filter)."""
        return f"{self.prefix}.p.{self._check_partition(partition)}.{source_id}"

    def result_subject(self, source_id: str) -> str:
        """Where a worker publishes a source's results: ``<prefix>.out.<source_id>``."""
        return f"{self.prefix}.out.{check_source_id(source_id)}"

    def consumer_name(self, partition: int) -> str:
        """The durable consumer of ``partition``."""
        return f"{self.consumer_prefix}{self._check_partition(partition)}"

    def partition_of(self, source_id: str) -> int:
        """The partition the server maps ``source_id`` to (FNV-1a 32-bit of the id, modulo
        ``partitions``, as NATS's ``partition()`` mapping computes it)."""
        return _fnv1a_32(check_source_id(source_id).encode()) % self.partitions

    @staticmethod
    def source_id_of(subject: str) -> str:
        """The source id of an input, partition or result subject (its last token)."""
        return subject.rsplit(".", 1)[-1]

    def _check_partition(self, partition: int) -> int:
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition must be in 0..{self.partitions - 1}, got {partition}")
        return partition

    # -- the server's configuration ------------------------------------------------------------

    @property
    def _transform_destination(self) -> str:
        return f"{self.prefix}.p.{{{{partition({self.partitions},1)}}}}.{{{{wildcard(1)}}}}"

    def input_stream_config(self) -> dict[str, Any]:
        """The input stream's config, as the JetStream API takes it."""
        return {
            "name": self.input_stream,
            "subjects": [f"{self.prefix}.in.*"],
            "subject_transform": {
                "src": f"{self.prefix}.in.*", "dest": self._transform_destination,
            },
            "retention": "limits",
            "discard": "old",
            "max_age": _nanoseconds(self.max_age_seconds),
            "max_bytes": self.max_bytes,
            "storage": self.storage,
            "num_replicas": self.replicas,
            # Publishers set Nats-Msg-Id = <source>:<seq>: a re-sent frame is stored once.
            "duplicate_window": _nanoseconds(min(120.0, self.max_age_seconds)),
        }

    def results_stream_config(self) -> dict[str, Any] | None:
        """The results stream's config (None when there is none)."""
        if self.results_stream is None:
            return None
        return {
            "name": self.results_stream,
            "subjects": [f"{self.prefix}.out.*", f"{self.prefix}.drop.*"],
            "retention": "limits",
            "discard": "old",
            "max_age": _nanoseconds(self.results_max_age_seconds),
            "max_bytes": self.max_bytes,
            "storage": self.storage,
            "num_replicas": self.replicas,
        }

    def consumer_config(self, partition: int) -> dict[str, Any]:
        """The durable pull consumer of ``partition``, as the JetStream API takes it."""
        return {
            "durable_name": self.consumer_name(partition),
            "filter_subject": self.partition_subject(partition),
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": _nanoseconds(self.ack_wait_seconds),
            "max_deliver": -1,
            "max_ack_pending": self.max_ack_pending,
            "max_waiting": 512,
            "replay_policy": "instant",
            "priority_groups": [self.priority_group],
            "priority_policy": "pinned_client",
            "priority_timeout": _nanoseconds(self.pin_timeout_seconds),
        }


@dataclass(frozen=True)
class InitReport:
    """What :func:`init_layout` did: names it ``created``, ``updated`` or found
    ``unchanged`` (streams, ``consumer <name>``, ``kv <bucket>``, ``objects <bucket>``)."""

    created: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)


def _differs(wanted: dict[str, Any], actual: dict[str, Any]) -> bool:
    return any(actual.get(key) != value for key, value in wanted.items())


def _partitions_of(config: dict[str, Any]) -> int | None:
    destination = (config.get("subject_transform") or {}).get("dest", "")
    found = re.search(r"partition\((\d+)", destination)
    return int(found.group(1)) if found else None


async def init_layout(connection: NATS, layout: Layout, *, api: JetStreamApi | None = None
                      ) -> InitReport:
    """Create what ``layout`` needs on the server, or bring it to ``layout``'s settings.

    Idempotent: run it at every deployment; with the same ``layout`` it changes nothing
    (the report says ``unchanged``). Limits, the pin timeout and the in-flight budget are
    updated in place. Raises :class:`LayoutError` when the input stream exists with another
    partition count or other subjects (changing P would move cameras between partitions
    while workers hold them: delete the stream, ``nats stream rm TS_IN``, and start over)
    or when a foreign stream already captures the input subjects;
    :class:`~torchstream.nats.NatsUnavailableError` when JetStream does not answer.
    """
    api = api or JetStreamApi(connection)
    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []

    async def ensure_stream(
        config: dict[str, Any], *, check_partitions: bool, may_add_subjects: bool = False
    ) -> None:
        name = config["name"]
        info = await api.stream_info(name)
        if info is None:
            try:
                await api.create_stream(config)
            except JetStreamError as exc:
                if exc.error_code == 10065:  # subjects overlap with an existing stream
                    raise LayoutError(
                        f"cannot create stream {name}: another stream already captures "
                        f"{config['subjects']} ({exc.description})"
                    ) from exc
                raise
            created.append(name)
            return
        actual = info["config"]
        if check_partitions:
            partitions = _partitions_of(actual)
            if partitions != layout.partitions:
                raise LayoutError(
                    f"stream {name} maps sources to {partitions} partitions, the layout asks "
                    f"for {layout.partitions}; changing the count re-maps every camera. Keep "
                    f"--partitions {partitions}, or delete the stream (and its consumers) "
                    "and run init again"
                )
        subjects = actual.get("subjects") or []
        if subjects != config["subjects"] and not (
            # an earlier layout's results stream (results only): drop records join it
            may_add_subjects and set(subjects) < set(config["subjects"])
        ):
            raise LayoutError(
                f"stream {name} captures {actual.get('subjects')}, the layout needs "
                f"{config['subjects']}: is it another deployment's stream?"
            )
        if _differs(config, actual):
            await api.update_stream(config)
            updated.append(name)
        else:
            unchanged.append(name)

    await ensure_stream(layout.input_stream_config(), check_partitions=True)
    results = layout.results_stream_config()
    if results is not None:
        await ensure_stream(results, check_partitions=False, may_add_subjects=True)

    for partition in range(layout.partitions):
        config = layout.consumer_config(partition)
        label = f"consumer {config['durable_name']}"
        info = await api.consumer_info(layout.input_stream, config["durable_name"])
        if info is None:
            await api.create_consumer(layout.input_stream, config)
            created.append(label)
        elif _differs(config, info["config"]):
            await api.create_consumer(layout.input_stream, config)  # create-or-update
            updated.append(label)
        else:
            unchanged.append(label)

    await _ensure_buckets(connection, layout, created, unchanged)
    report = InitReport(tuple(created), tuple(updated), tuple(unchanged))
    log.info("nats layout: %d created, %d updated, %d unchanged",
             len(created), len(updated), len(unchanged))
    return report


async def _ensure_buckets(
    connection: NATS, layout: Layout, created: list[str], unchanged: list[str]
) -> None:
    js = connection.jetstream()
    storage = nats.js.api.StorageType.FILE if layout.storage == "file" else (
        nats.js.api.StorageType.MEMORY
    )
    # The keyframe bucket keeps a few positions per camera: a new owner replays from the
    # last keyframe *before* its first delivery, which may not be the newest one.
    buckets = [
        (layout.keyframes_bucket, None, KEYFRAME_HISTORY),
        (layout.workers_bucket, layout.heartbeat_ttl_seconds, 1),
    ]
    for bucket, ttl, history in buckets:
        label = f"kv {bucket}"
        try:
            await js.key_value(bucket)
            unchanged.append(label)
            continue
        except nats.js.errors.BucketNotFoundError:
            pass
        await js.create_key_value(nats.js.api.KeyValueConfig(
            bucket=bucket, history=history, ttl=ttl, storage=storage, replicas=layout.replicas,
        ))
        created.append(label)
    label = f"objects {layout.objects_bucket}"
    try:
        await js.object_store(layout.objects_bucket)
        unchanged.append(label)
    except nats.js.errors.BucketNotFoundError:
        await js.create_object_store(layout.objects_bucket, nats.js.api.ObjectStoreConfig(
            ttl=layout.max_age_seconds, storage=storage, replicas=layout.replicas,
        ))
        created.append(label)
