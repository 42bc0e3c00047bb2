"""The exception tree. Each message names the problem and, where there is one, the fix.

``PgqError`` and its children are failures. ``JobSignal`` and its children are
outcomes a handler raises on purpose (snooze, give up): they are not failures,
so they live outside ``PgqError``.

This module imports only pgq.job (which imports nothing from pgq): every other
module may raise these errors without an import cycle.
"""

from __future__ import annotations

from pgq.job import MAX_DELAY_SECONDS


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters; never raises.

    Bad input may be anything, including an object whose ``__repr__`` raises: the
    message about it must still be written.
    """
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PgqError(Exception):
    """Base class of every error pgq raises."""


class ConfigError(PgqError):
    """A setting is missing or malformed (DSN, schema name, worker options)."""


class SchemaError(PgqError):
    """The database has no pgq schema, or one at another revision."""


class InvalidJobError(PgqError, ValueError):
    """A job that would be refused: args not JSON, max_attempts < 1, naive datetime..."""


class JobNotFoundError(PgqError, LookupError):
    """No job has this id."""


class JobStateError(PgqError):
    """The job is not in a state that allows this, like requeueing a running job."""


class WaitTimeout(PgqError, TimeoutError):
    """``pgq.wait`` gave up: the job did not finish within its timeout (it may still)."""


class JobSignal(Exception):
    """Raised by a handler to choose its job's outcome. Not a failure."""


class Snooze(JobSignal):
    """Run the job again after ``seconds``, without using up an attempt.

    Example::

        @app.task()
        def sync_account(account_id: int, ctx: pgq.JobContext) -> None:
            if rate_limited():
                raise pgq.Snooze(30)
    """

    def __init__(self, seconds: float) -> None:
        number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
        if not number or not 0 <= seconds <= MAX_DELAY_SECONDS:
            raise InvalidJobError(
                f"Snooze needs 0 <= seconds <= {MAX_DELAY_SECONDS:g} (ten years), "
                f"got {shown(seconds)}"
            )
        super().__init__(f"snoozed for {seconds:g}s")
        self.seconds = float(seconds)


class GiveUp(JobSignal):
    """Stop retrying: the job goes to ``dead`` at once with ``reason`` as its error.

    Use it for failures a retry cannot fix, such as a malformed payload.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MiddlewareError(PgqError):
    """A job's middleware broke: it raised, did not yield, or yielded twice.

    The job fails with it (retried like any failure); the worker and the other
    jobs go on. Its message names the middleware, and its ``__cause__`` is what
    the middleware raised.
    """
