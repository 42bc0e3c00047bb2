"""pgq's view of a job (``pgq.get_job``) as Django's ``TaskResult``.

==========================  =====================================================
Django                      pgq
==========================  =====================================================
``id``                      the job id, as a string
``status``                  queued: READY (also between retries); running: RUNNING;
                            succeeded: SUCCESSFUL; dead and cancelled: FAILED
``args``, ``kwargs``        the job's args ``{"args": [...], "kwargs": {...}}``
``return_value``            the job's result (what the handler returned, as JSON)
``errors``                  each failed attempt in the job's history; operators'
                            actions (requeue, cancel) are not errors and are left out
``enqueued_at``             created_at
``started_at``,             started_at: the start of the latest attempt
``last_attempted_at``
``finished_at``             finished_at
``worker_ids``              one per attempt: the worker that ran it, "" where pgq
                            keeps no name (the attempt that succeeded)
==========================  =====================================================
"""

from __future__ import annotations

import re
from typing import Any

from pgq.admin import JobDetail
from pgq.contrib.django.compat import Task, TaskError, TaskResult, TaskResultStatus
from pgq.job import JobStatus

STATUSES = {
    JobStatus.QUEUED: TaskResultStatus.READY,
    JobStatus.RUNNING: TaskResultStatus.RUNNING,
    JobStatus.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    JobStatus.DEAD: TaskResultStatus.FAILED,
    # Django has no cancelled state: the task did not (or will not) finish.
    JobStatus.CANCELLED: TaskResultStatus.FAILED,
}

#: The class of an error pgq recorded itself, where no exception was raised in the
#: handler (its worker was lost, its result could not be stored).
PGQ_ERROR_CLASS = "pgq.errors.PgqError"
GIVE_UP_CLASS = "pgq.errors.GiveUp"

# A traceback's exception line: "ValueError: boom", "shop.tasks.OrderMissing", ...
_EXCEPTION_LINE = re.compile(r"^(?P<path>[A-Za-z_][\w.]*)(?::|$)")


def task_result(job: JobDetail, task: Task[Any, Any], backend_alias: str) -> TaskResult[Any]:
    """The TaskResult of ``task`` for pgq's ``job``."""
    stored = job.args if isinstance(job.args, dict) else {}
    result: TaskResult[Any] = TaskResult(
        task=task,
        id=str(job.id),
        status=STATUSES[job.status],
        enqueued_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        last_attempted_at=job.started_at,
        args=stored.get("args", []),
        kwargs=stored.get("kwargs", {}),
        backend=backend_alias,
        errors=task_errors(job.errors),
        worker_ids=worker_ids(job),
    )
    if job.status is JobStatus.SUCCEEDED:
        # Django keeps the value in a private field, which its own backends set too.
        object.__setattr__(result, "_return_value", job.result)
    return result


def task_errors(history: list[dict[str, Any]]) -> list[TaskError]:
    """The failed attempts in pgq's history, oldest first."""
    return [
        TaskError(
            exception_class_path=exception_class_path(entry),
            traceback=entry.get("traceback") or entry["error"],
        )
        for entry in history
        if "error" in entry
    ]


def exception_class_path(entry: dict[str, Any]) -> str:
    """The dotted path of the exception a history entry records.

    pgq stores ``Type: message`` and the formatted traceback, whose exception line
    names the class with its module (``shop.tasks.OrderMissing: ...``; builtins bare).
    """
    error = str(entry["error"])
    name = error.partition(":")[0]
    for line in reversed(str(entry.get("traceback") or "").splitlines()):
        match = _EXCEPTION_LINE.match(line)
        if match and (match["path"] == name or match["path"].endswith(f".{name}")):
            path = match["path"]
            return path if "." in path else f"builtins.{path}"
    return GIVE_UP_CLASS if name == "GiveUp" else PGQ_ERROR_CLASS


def worker_ids(job: JobDetail) -> list[str]:
    """One worker name per attempt (Django counts attempts as ``len(worker_ids)``)."""
    by_attempt: dict[int, str] = {}
    for entry in job.errors:
        if entry.get("event") == "requeued":  # attempts start again from 1
            by_attempt.clear()
        elif isinstance(entry.get("attempt"), int):
            by_attempt[entry["attempt"]] = str(entry.get("worker") or "")
    if job.locked_by is not None:
        by_attempt[job.attempts] = job.locked_by
    return [by_attempt.get(attempt, "") for attempt in range(1, job.attempts + 1)]
