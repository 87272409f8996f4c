"""W3C trace context of requests (client/_trace.py), with and without OpenTelemetry."""

from __future__ import annotations

import re
import sys

import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream.client._trace import check_traceparent, new_traceparent

W3C = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")


def test_without_a_span_each_request_starts_its_own_trace() -> None:
    parents = [new_traceparent() for _ in range(200)]
    traces = set()
    for parent in parents:
        match = W3C.match(parent)
        assert match is not None, parent
        assert match[1].strip("0") and match[2].strip("0")
        traces.add(match[1])
    assert len(traces) == len(parents)


def test_the_active_span_gives_the_trace_and_is_the_parent() -> None:
    trace = pytest.importorskip("opentelemetry.trace")
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")  # local: the global provider is untouched
    with tracer.start_as_current_span("handler") as span:
        inside = [new_traceparent(), new_traceparent()]
    context = span.get_span_context()
    # The flags are the span's: sampled, and (OpenTelemetry >= 1.3x) W3C level 2's "random".
    expected = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert inside == [expected, expected]
    assert int(expected[-2:], 16) & 1  # sampled
    assert trace.get_current_span().get_span_context().is_valid is False
    assert new_traceparent()[3:35] != f"{context.trace_id:032x}"


def test_an_unsampled_span_stays_unsampled() -> None:
    pytest.importorskip("opentelemetry.trace")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    with tracer.start_as_current_span("handler") as span:
        parent = new_traceparent()
    context = span.get_span_context()
    assert parent[:52] == f"00-{context.trace_id:032x}-{context.span_id:016x}"
    assert not int(parent[-2:], 16) & 1  # not sampled


def test_without_opentelemetry_a_new_trace_is_started(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.trace")
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("handler") as span:
        monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)  # as if not installed
        parent = new_traceparent()
    assert W3C.match(parent)
    assert parent[3:35] != f"{span.get_span_context().trace_id:032x}"


@pytest.mark.parametrize(
    "value",
    [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "",
        None,
    ],
)
def test_invalid_traceparents_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="W3C traceparent"):
        check_traceparent(value)  # type: ignore[arg-type]


def test_a_valid_traceparent_is_kept() -> None:
    value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    assert check_traceparent(value) == value


def test_a_new_trace_is_sampled_for_the_given_share_of_trace_ids() -> None:
    from torchstream.client._trace import new_traceparent

    assert all(new_traceparent(sample_ratio=0.0).endswith("-00") for _ in range(50))
    assert all(new_traceparent(sample_ratio=1.0).endswith("-01") for _ in range(50))
    sampled = sum(new_traceparent(sample_ratio=0.25).endswith("-01") for _ in range(4000))
    assert 800 < sampled < 1200  # 25 %, decided from the trace id as TraceIdRatioBased does
