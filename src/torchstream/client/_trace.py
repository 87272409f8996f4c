"""W3C trace context for requests, sans-IO: the ``traceparent`` each send starts.

OpenTelemetry is optional. When the caller's code has imported it and a span is active, a
request continues that span's trace; otherwise it starts a trace of its own. Nothing here
imports OpenTelemetry: if it is not imported yet, no span can be active.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

__all__ = ["check_traceparent", "new_traceparent", "trace_id_of"]

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16


def _random_ids() -> tuple[str, str]:
    """A random trace id (32 hex) and parent id (16 hex), from one read of the OS's CSPRNG."""
    while True:  # an all-zero id is invalid in W3C trace context; one in 2**64 draws
        value = os.urandom(24).hex()
        trace_id, parent_id = value[:32], value[32:]
        if trace_id.strip("0") and parent_id.strip("0"):
            return trace_id, parent_id


def _propagated() -> str | None:
    """The active OpenTelemetry span's ``traceparent``, or None when there is none."""
    trace: Any = sys.modules.get("opentelemetry.trace")
    if trace is None:  # never imported (or blocked): no span can be active
        return None
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    # The W3C propagator, not the global one: the wire field is a W3C traceparent whatever
    # propagators the application configured (B3, Jaeger, ...). tracestate has no field on
    # the wire and is left out.
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def new_traceparent(*, sample_ratio: float = 1.0) -> str:
    """The ``traceparent`` of a new request.

    Inside an active OpenTelemetry span, the span's own context as OpenTelemetry's W3C
    propagator writes it: the request's trace id is the span's and the span is the parent of
    whatever the pipeline traces for it. Otherwise a new trace: a random trace id, a random
    parent id, and the sampled flag set for ``sample_ratio`` of trace ids (as OpenTelemetry's
    ``TraceIdRatioBased`` decides; the default 1.0: always sampled, flags ``01``).
    """
    propagated = _propagated()
    if propagated is not None:
        return propagated
    trace_id, parent_id = _random_ids()
    sampled = int(trace_id[16:], 16) < sample_ratio * 2**64
    return f"00-{trace_id}-{parent_id}-{'01' if sampled else '00'}"


def check_traceparent(value: str) -> str:
    """``value`` if it is a valid W3C ``traceparent`` this protocol carries, else ValueError."""
    match = _TRACEPARENT.match(value) if isinstance(value, str) else None
    if (
        match is None
        or match[1] == "ff"
        or match[2] == _ZERO_TRACE_ID
        or match[3] == _ZERO_SPAN_ID
    ):
        raise ValueError(
            f"traceparent must be a W3C traceparent '00-<32 hex trace id>-<16 hex parent id>-"
            f"<2 hex flags>' in lower case with non-zero ids, got {value!r}"
        )
    return value


def trace_id_of(traceparent: str) -> str:
    """The 32-hex trace id of a ``traceparent``."""
    return traceparent[3:35]
