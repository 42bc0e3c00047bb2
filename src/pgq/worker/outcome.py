"""What a finished attempt means for its job: the row of the batched ``finish_jobs`` write.

Pure functions of (job, what happened, retry policy), so tests can check every
edge. The executor turns a handler's run into one of these; the outcome writer
stores them.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

from pgq.enqueue import encode_value
from pgq.errors import GiveUp, InvalidJobError, Snooze
from pgq.job import MAX_RESULT_BYTES, ClaimedJob, JobStatus
from pgq.retry import DEFAULT_RETRY, Retry, retry_delay

MAX_ERROR_CHARS = 2_000
MAX_TRACEBACK_CHARS = 20_000


#: What a handler returned: its JSON text (None for None), or why it cannot be stored.
Returned = tuple[str | None, str | None]
RETURNED_NONE: Returned = (None, None)


def encode_result(value: Any) -> Returned:
    """A handler's return value as the job's result; on the handler's own thread when sync."""
    if value is None:
        return RETURNED_NONE
    try:
        return encode_value(value, "the handler's return value", MAX_RESULT_BYTES), None
    except InvalidJobError as problem:
        return None, str(problem)


@dataclass(slots=True)
class Outcome:
    """The next state of one job, fenced by the lease token of the claim that ran it."""

    job: ClaimedJob
    status: JobStatus
    #: succeeded, retried, dead, gave_up, refused, snoozed or handed_back: for logs and counts.
    kind: str
    delay_seconds: float | None = None
    refund_attempt: bool = False
    error: str | None = None
    traceback: str | None = None
    #: How long the handler ran, set by the worker (None if it never started).
    duration_seconds: float | None = None
    #: What a succeeded handler returned, as JSON text (None: it returned None).
    result: str | None = None


def storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: no NUL, no lone surrogates (from undecodable bytes)."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def as_text(value: object) -> str:
    """``str(value)``, or a note saying it could not be had: never raises.

    A handler may raise an exception whose ``__str__`` raises too; its job must
    still get an outcome, or it would stay running under a lease the heartbeat
    keeps extending.
    """
    try:
        text = str(value)
    except Exception as problem:
        return f"<{_type_name(value)}'s text could not be formatted: {_type_name(problem)}>"
    return text if type(text) is str else str.__str__(text)


def _type_name(value: object) -> str:
    try:
        return type(value).__name__
    except Exception:
        return "object"


def describe_error(error: BaseException) -> str:
    """``Type: message`` for ``last_error`` and the history; never raises."""
    message = as_text(error)
    text = f"{_type_name(error)}: {message}" if message else _type_name(error)
    return storable(text[:MAX_ERROR_CHARS])


def format_traceback(error: BaseException) -> str:
    try:
        text = storable("".join(traceback.format_exception(error)))
    except Exception as problem:
        return f"(the traceback could not be formatted: {describe_error(problem)})"
    # Keep the end: the innermost frames say where it failed.
    return text if len(text) <= MAX_TRACEBACK_CHARS else "...\n" + text[-MAX_TRACEBACK_CHARS:]


def succeeded(job: ClaimedJob, result: str | None = None) -> Outcome:
    """The handler returned; ``result`` is its value as JSON text (None for None)."""
    if result is None:  # the hot path: no keyword to bind
        return Outcome(job, JobStatus.SUCCEEDED, "succeeded")
    return Outcome(job, JobStatus.SUCCEEDED, "succeeded", result=result)


def result_refused(job: ClaimedJob, reason: str) -> Outcome:
    """The handler returned a value that cannot be stored: dead now, never retried.

    Its work is done; running it again would repeat its side effects and most
    likely return the same value.
    """
    error = storable(f"pgq could not store this job's result: {reason}")[:MAX_ERROR_CHARS]
    return Outcome(job, JobStatus.DEAD, "refused", error=error)


def failed(job: ClaimedJob, error: BaseException, policy: Retry) -> Outcome:
    """Retry after backoff while attempts remain, else dead (the dead-letter queue)."""
    delay = retry_delay(job.attempt, job.max_attempts, policy)
    status, kind = (JobStatus.DEAD, "dead") if delay is None else (JobStatus.QUEUED, "retried")
    return Outcome(
        job, status, kind, delay_seconds=delay,
        error=describe_error(error), traceback=format_traceback(error),
    )  # fmt: skip


def gave_up(job: ClaimedJob, reason: object) -> Outcome:
    """The handler said a retry cannot help: dead now."""
    error = storable(f"GiveUp: {as_text(reason)}")[:MAX_ERROR_CHARS]
    return Outcome(job, JobStatus.DEAD, "gave_up", error=error)


def refused(job: ClaimedJob, reason: str) -> Outcome:
    """pgq cannot even start the job (its args cannot be decoded): dead now, never retried."""
    error = storable(f"pgq could not run this job: {reason}")[:MAX_ERROR_CHARS]
    return Outcome(job, JobStatus.DEAD, "refused", error=error)


def snoozed(job: ClaimedJob, seconds: float) -> Outcome:
    """Run again later; the attempt is given back."""
    return Outcome(job, JobStatus.QUEUED, "snoozed", delay_seconds=seconds, refund_attempt=True)


def handed_back(job: ClaimedJob) -> Outcome:
    """The worker is shutting down: queued again at once, the attempt given back."""
    return Outcome(job, JobStatus.QUEUED, "handed_back", delay_seconds=0.0, refund_attempt=True)


def decided(
    job: ClaimedJob, error: BaseException | None, policy: Retry, returned: Returned = RETURNED_NONE
) -> Outcome:
    """The outcome of a handler that returned ``returned`` (``error`` None) or raised ``error``.

    Never raises: if deciding fails (an exception that breaks formatting), the
    job still gets a plain failure rather than stay running.
    """
    try:
        if error is None:
            if returned is RETURNED_NONE:  # nearly always: nothing to store
                return succeeded(job)
            result, problem = returned
            if problem is not None:
                return result_refused(job, problem)
            return succeeded(job, result)
        if isinstance(error, Snooze):
            return snoozed(job, error.seconds)
        if isinstance(error, GiveUp):
            return gave_up(job, error.reason)
        return failed(job, error, policy)
    except Exception as problem:
        why = describe_error(problem)
        return failed(
            job, RuntimeError(f"pgq could not decide this job's outcome: {why}"), DEFAULT_RETRY
        )
