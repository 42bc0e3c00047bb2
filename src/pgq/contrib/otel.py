"""OpenTelemetry traces of enqueues and runs: ``pip install "pgq-jobs[otel]"``.

``instrument(app)`` makes two kinds of span, named and attributed after
OpenTelemetry's messaging conventions (``messaging.system`` is ``pgq``, the
destination is the job's queue, the message id is the job's id):

- ``send <task>`` (kind PRODUCER) around each ``pgq.enqueue``/``enqueue_async``
  in this process, as a child of whatever span is current there. Its W3C trace
  context is stored with the job (the ``trace_context`` column, revision 0009).
- ``process <task>`` (kind CONSUMER) around each run of ``app``'s jobs, a child
  of the enqueue's span, so one trace goes from the web request that enqueued
  to every attempt that ran. Its status is ERROR when the attempt failed (or
  gave up); a snooze is not a failure. It is a middleware (pgq.middleware), the
  outermost, so that the app's own middleware and the handler run inside it.

Only ``opentelemetry-api`` is imported; the application sets up the SDK and its
exporters. pgq itself never imports this module: a process that does not call
``instrument`` pays nothing for it.

Left out: ``enqueue_many`` (one span per bulk call would be the right shape; not
built yet), and jobs with a dedupe key, whose enqueue runs the SQL function
``enqueue()`` and stores no trace context: their runs start traces of their own.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, TracerProvider

from pgq.config import installed_version
from pgq.enqueue import EnqueueResult, set_tracing
from pgq.errors import GiveUp, JobSignal
from pgq.middleware import Middleware
from pgq.tasks import App, JobContext

SYSTEM = "pgq"
# Apps whose runs are traced already.
_instrumented: weakref.WeakSet[App] = weakref.WeakSet()


def instrument(app: App | None = None, *, tracer_provider: TracerProvider | None = None) -> None:
    """Trace this process's enqueues and, if ``app`` is given, the runs of its jobs.

    Call it once where the app is defined (the worker imports that module too),
    after the SDK is set up or before: spans go to whichever provider is global
    when they start, or to ``tracer_provider``.

    Example::

        app = pgq.App()
        pgq.contrib.otel.instrument(app)
    """
    tracer = trace.get_tracer("pgq", installed_version(), tracer_provider=tracer_provider)
    set_tracing(_EnqueueTracing(tracer))
    if app is not None and app not in _instrumented:  # twice would nest two spans per run
        _instrumented.add(app)
        app.middleware(run_spans(tracer), outermost=True)


def uninstrument() -> None:
    """Stop tracing enqueues in this process (runs of an instrumented app keep their spans)."""
    set_tracing(None)


class _TracedEnqueue:
    """One enqueue's span, current from ``start`` until ``end``."""

    __slots__ = ("_span", "_token", "trace_context")

    def __init__(self, tracer: Tracer, task: str, queue: str) -> None:
        self._span = tracer.start_span(
            f"send {task}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": queue,
                "pgq.task": task,
            },
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        # Empty when nothing records (no SDK): then there is no trace to continue.
        self.trace_context = json.dumps(carrier) if carrier else None

    def end(self, result: EnqueueResult | None, error: BaseException | None) -> None:
        try:
            if result is not None:
                self._span.set_attribute("messaging.message.id", str(result.id))
                self._span.set_attribute("pgq.job.created", result.created)
            if error is not None:
                self._span.record_exception(error)
                self._span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}"))
        finally:
            otel_context.detach(self._token)
            self._span.end()


class _EnqueueTracing:
    __slots__ = ("_tracer",)

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def start(self, task: str, queue: str) -> _TracedEnqueue:
        return _TracedEnqueue(self._tracer, task, queue)


def run_spans(tracer: Tracer | None = None) -> Middleware:
    """The middleware that wraps each run in a ``process <task>`` span (``instrument`` adds it).

    Use it on its own to trace one task's runs: ``@app.task(middleware=[run_spans()])``.
    """
    run_tracer = tracer or trace.get_tracer("pgq", installed_version())

    def trace_run(ctx: JobContext) -> Iterator[None]:
        with run_tracer.start_as_current_span(
            f"process {ctx.task}",
            context=_enqueuers_context(ctx.trace_context),
            kind=SpanKind.CONSUMER,
            attributes=_run_attributes(ctx),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except JobSignal as signal:
                span.set_attribute("pgq.signal", type(signal).__name__)
                if isinstance(signal, GiveUp):  # the job is dead now
                    span.set_status(Status(StatusCode.ERROR, f"GiveUp: {signal.reason}"))
                raise
            except BaseException as error:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
                raise

    return trace_run


def _enqueuers_context(carrier: Mapping[str, str] | None) -> otel_context.Context | None:
    """The context the enqueuer stored, to continue its trace; None (a new trace) if none."""
    if not isinstance(carrier, Mapping) or not carrier:
        return None
    return propagate.extract(dict(carrier))


def _run_attributes(ctx: JobContext) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": ctx.queue,
        "messaging.message.id": str(ctx.job_id),
        "messaging.client.id": ctx.worker,
        "pgq.task": ctx.task,
        "pgq.job.attempt": ctx.attempt,
        "pgq.job.max_attempts": ctx.max_attempts,
    }
