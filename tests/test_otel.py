"""pgq.contrib.otel: one trace from the enqueuer's span through every run, with the SDK's
in-memory exporter, a real enqueue and a real worker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import pgq
from pgq.contrib import otel
from worker_helpers import make_worker, running


@pytest.fixture
def exporter() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory, provider
    otel.uninstrument()


def traced_app(provider: TracerProvider) -> pgq.App:
    app = pgq.App()
    otel.instrument(app, tracer_provider=provider)
    otel.instrument(app, tracer_provider=provider)  # twice: still one span per run

    @app.task(queue="billing", max_attempts=2, retry=pgq.Retry(base_seconds=0.05, cap_seconds=0.05))
    def charge(order: int, ctx: pgq.JobContext) -> int:
        if ctx.attempt == 1:
            raise RuntimeError("card declined")
        return order

    @app.task()
    async def notify(order: int) -> None:
        await asyncio.sleep(0)

    return app


async def enqueue_in_a_request_and_run(
    dsn: str, app: pgq.App, provider: TracerProvider
) -> tuple[Any, list[int]]:
    tracer = provider.get_tracer("web")
    async with await psycopg.AsyncConnection.connect(dsn) as db:
        with tracer.start_as_current_span("POST /orders") as request:
            charged = await app.tasks["charge"].enqueue_async(db, {"order": 7})
            notified = await app.tasks["notify"].enqueue_async(db, {"order": 7})
        await db.commit()
        await db.set_autocommit(True)
        async with running(make_worker(app, dsn)):
            for job_id in (charged.id, notified.id):
                await pgq.wait_async(db, job_id, timeout=20)
    return request.get_span_context(), [charged.id, notified.id]


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def test_one_trace_runs_from_the_enqueuing_request_through_every_attempt(
    dsn: str, exporter: tuple[InMemorySpanExporter, TracerProvider]
) -> None:
    memory, provider = exporter
    request, (charged, notified) = asyncio.run(
        enqueue_in_a_request_and_run(dsn, traced_app(provider), provider)
    )
    spans = memory.get_finished_spans()

    (send,) = by_name(spans, "send charge")
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None and send.parent.span_id == request.span_id
    assert dict(send.attributes or {}) == {
        "messaging.system": "pgq", "messaging.operation.type": "send",
        "messaging.operation.name": "send", "messaging.destination.name": "billing",
        "pgq.task": "charge", "messaging.message.id": str(charged), "pgq.job.created": True,
    }  # fmt: skip

    first, second = sorted(by_name(spans, "process charge"), key=lambda s: s.start_time or 0)
    for run in (first, second):
        assert run.kind is SpanKind.CONSUMER
        assert run.context is not None and run.context.trace_id == request.trace_id
        assert run.parent is not None and run.parent.span_id == send.context.span_id
        assert run.attributes is not None
        assert run.attributes["messaging.message.id"] == str(charged)
        assert run.attributes["messaging.destination.name"] == "billing"
    assert first.attributes["pgq.job.attempt"] == 1  # type: ignore[index]
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "RuntimeError: card declined"
    assert [event.name for event in first.events] == ["exception"]
    assert second.attributes["pgq.job.attempt"] == 2  # type: ignore[index]
    assert second.status.status_code is StatusCode.UNSET

    # The async handler's run continues the same trace.
    (run_notify,) = by_name(spans, "process notify")
    (send_notify,) = by_name(spans, "send notify")
    assert run_notify.context.trace_id == request.trace_id
    assert run_notify.parent.span_id == send_notify.context.span_id  # type: ignore[union-attr]
    assert run_notify.attributes["messaging.message.id"] == str(notified)  # type: ignore[index]


def test_the_stored_trace_context_is_the_enqueue_spans(
    dsn: str, exporter: tuple[InMemorySpanExporter, TracerProvider]
) -> None:
    memory, provider = exporter
    otel.instrument(tracer_provider=provider)
    with psycopg.connect(dsn) as conn:
        job_id = pgq.enqueue(conn, "anything", {"n": 1}).id
        stored = conn.execute("SELECT trace_context FROM pgq.jobs WHERE id = %s", [job_id])
        (context,) = stored.fetchone() or (None,)
    (send,) = memory.get_finished_spans()
    span = send.context
    assert span is not None and span.trace_id and span.span_id
    flags = f"{span.trace_flags:02x}"
    assert context == {"traceparent": f"00-{span.trace_id:032x}-{span.span_id:016x}-{flags}"}


def test_a_failed_enqueue_ends_its_span_in_error_and_leaves_no_context_attached(
    dsn: str, exporter: tuple[InMemorySpanExporter, TracerProvider]
) -> None:
    memory, provider = exporter
    otel.instrument(tracer_provider=provider)
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE pgq.jobs CASCADE")
        with pytest.raises(pgq.SchemaError):
            pgq.enqueue(conn, "anything", {"n": 1})
    (send,) = memory.get_finished_spans()
    assert send.status.status_code is StatusCode.ERROR
    from opentelemetry import trace

    assert not trace.get_current_span().get_span_context().is_valid


def test_without_instrument_nothing_is_stored_and_enqueue_never_imports_opentelemetry(
    dsn: str,
) -> None:
    with psycopg.connect(dsn) as conn:
        job_id = pgq.enqueue(conn, "anything", {"n": 1}).id
        row = conn.execute("SELECT trace_context FROM pgq.jobs WHERE id = %s", [job_id])
        assert row.fetchone() == (None,)
    # A fresh interpreter: enqueue and a worker's modules load no opentelemetry at all.
    code = (
        "import sys, pgq, pgq.worker.worker, pgq.testing; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == []
