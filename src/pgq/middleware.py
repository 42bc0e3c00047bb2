"""Middleware: code that wraps every run of a job's handler, per app and per task.

A middleware is a generator function of the job's ``JobContext``, written as for
``contextlib.contextmanager``: the code before its one ``yield`` runs before the
handler, ``yield`` gives back what the handler returned, and the handler's
exception is raised at the ``yield``::

    @app.middleware
    def timed(ctx: pgq.JobContext) -> Iterator[None]:
        started = time.monotonic()
        try:
            result = yield
        except Exception as error:
            log.warning("job %s failed: %s", ctx.job_id, error)
            raise
        finally:
            log.info("job %s took %.3fs", ctx.job_id, time.monotonic() - started)

A plain generator, not a wrapper that calls the handler, so that one middleware
serves ``def`` and ``async def`` handlers alike and runs in the handler's own
thread or asyncio task: a context variable it sets is the handler's to see.

The rules, so that one job stays the unit of failure:

- App middleware wraps task middleware; each list runs in the order given, the
  first outermost. After-parts run innermost first.
- A middleware that raises, before or after the handler, fails its job with
  ``MiddlewareError`` naming it (``pgq.Snooze`` and ``pgq.GiveUp`` pass as they
  are: they choose an outcome on purpose). If it raises before the handler, the
  handler does not run; the middleware already entered see that error.
- A middleware cannot swallow the handler's exception: if its generator ends
  without raising, the exception stands and a warning says so. It cannot change
  what the handler returned either.
- A cancel (shutdown, lease lost, ``pgq cancel``) is raised at the ``yield`` as
  ``asyncio.CancelledError`` for an async handler, and always goes on.
- A sync handler past its timeout: the job fails at the deadline, but its
  middleware's after-part runs when the thread really ends, with what it got.

Whatever the chain, the job being run is set in ``pgq.logs.CURRENT_JOB`` for its handler's
thread or task, which is what puts job_id, task and attempt on every log line
(pgq.logs.JobContextFilter). That is not a middleware, on purpose: every job
needs it, and a context variable costs a fraction of a generator per job.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any, cast

from pgq.errors import JobSignal, MiddlewareError
from pgq.job import ClaimedJob
from pgq.logs import CURRENT_JOB
from pgq.tasks import JobContext, Middleware, middleware_name

__all__ = ["CURRENT_JOB", "Middleware", "run_async", "run_sync"]

log = logging.getLogger("pgq.middleware")

_Entered = list[tuple[Middleware, Generator[None, Any, None]]]


def run_sync(
    job: ClaimedJob,
    chain: tuple[Middleware, ...],
    context: JobContext | None,
    handler: Callable[..., Any],
    kwargs: dict[str, Any],
) -> Any:
    """Call a sync handler with ``kwargs`` on this thread, through ``chain``."""
    token = CURRENT_JOB.set(job)
    try:
        if not chain:  # the hot path: no generator to make
            return handler(**kwargs)
        assert context is not None, "a job with middleware gets its JobContext"
        entered = _enter(chain, context)
        try:
            value = handler(**kwargs)
        except BaseException as error:
            raise _failed(entered, error)  # noqa: B904 - the handler's error, or its successor
        if (problem := _leave(entered, None, value)) is not None:
            raise problem
        return value
    finally:
        CURRENT_JOB.reset(token)


def run_async(
    job: ClaimedJob,
    chain: tuple[Middleware, ...],
    context: JobContext | None,
    call: Awaitable[Any],
) -> Awaitable[Any]:
    """What to await, in this task, to run an async handler's ``call`` through ``chain``.

    Called in the job's own asyncio task, so the context variable needs no reset.
    With no middleware it is ``call`` itself: no coroutine of pgq's between.
    """
    CURRENT_JOB.set(job)
    if not chain:
        return call
    assert context is not None, "a job with middleware gets its JobContext"
    return _through_async(chain, context, call)


async def _through_async(
    chain: tuple[Middleware, ...], context: JobContext, call: Awaitable[Any]
) -> Any:
    try:
        entered = _enter(chain, context)
    except BaseException:
        if inspect.iscoroutine(call):
            call.close()  # never awaited: Python need not warn of it
        raise
    try:
        value = await call
    except BaseException as error:
        raise _failed(entered, error)  # noqa: B904 - the handler's error, or its successor
    if (problem := _leave(entered, None, value)) is not None:
        raise problem
    return value


def _enter(chain: tuple[Middleware, ...], context: JobContext) -> _Entered:
    """Run each middleware's before-part, outermost first; on a failure, unwind and raise."""
    entered: _Entered = []
    for middleware in chain:
        try:
            # A generator function: App checked it at registration.
            generator = cast(Generator[None, Any, None], middleware(context))
            next(generator)
        except StopIteration:
            problem: BaseException = MiddlewareError(
                f"middleware {middleware_name(middleware)} returned without yielding, so the "
                "handler did not run: a middleware yields once, where the handler runs"
            )
        except BaseException as error:
            problem = _blame(middleware, "before the handler", error)
        else:
            entered.append((middleware, generator))
            continue
        raise _failed(entered, problem)
    return entered


def _failed(entered: _Entered, error: BaseException) -> BaseException:
    """Run the after-parts of a run that failed with ``error``: what the job fails with."""
    final = _leave(entered, error, None)
    assert final is not None, "a failure stays a failure"
    return final


def _leave(entered: _Entered, error: BaseException | None, value: Any) -> BaseException | None:
    """Run the after-parts, innermost first: the error the job ends with (None: it succeeded)."""
    for middleware, generator in reversed(entered):
        try:
            if error is None:
                generator.send(value)
            else:
                generator.throw(error)
        except StopIteration:
            if error is not None:  # the log line carries the job (CURRENT_JOB)
                log.warning(
                    "middleware %s swallowed %s; the job fails with it all the same "
                    "(a middleware cannot turn a failure into a success)",
                    middleware_name(middleware), type(error).__name__,
                )  # fmt: skip
            continue
        except BaseException as raised:
            if raised is not error:
                error = _replaced(middleware, error, raised)
            continue
        generator.close()
        error = _kept(
            error,
            MiddlewareError(f"middleware {middleware_name(middleware)} yielded more than once"),
        )
    return error


def _replaced(
    middleware: Middleware, error: BaseException | None, raised: BaseException
) -> BaseException:
    """What the job ends with when a middleware's after-part raised ``raised``."""
    if isinstance(raised, RuntimeError) and raised.__cause__ is error and error is not None:
        return error  # a StopIteration the handler raised, turned into RuntimeError by PEP 479
    return _kept(error, _blame(middleware, "after the handler", raised))


def _kept(error: BaseException | None, problem: BaseException) -> BaseException:
    # A cancel or an exit must go on, whatever a middleware did meanwhile.
    if error is not None and not isinstance(error, Exception):
        return error
    return problem


def _blame(middleware: Middleware, when: str, raised: BaseException) -> BaseException:
    """``raised`` as its job's error: signals and cancels as they are, the rest named."""
    if isinstance(raised, JobSignal) or not isinstance(raised, Exception):
        return raised  # a cancel (asyncio.CancelledError) is no Exception either
    problem = MiddlewareError(
        f"middleware {middleware_name(middleware)} raised {when}: {type(raised).__name__}: {raised}"
    )
    problem.__cause__ = raised
    return problem
